import Pargen
@main struct Main { static func main() {} }
