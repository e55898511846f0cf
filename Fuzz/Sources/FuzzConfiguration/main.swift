import Foundation
import PargenFuzzing

// libFuzzer's entry: SwiftPM links an executable's main as `<module>_main`, so this is it, and it hands the
// target to libFuzzer's own driver.
@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

@_cdecl("FuzzConfiguration_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return runDriver(&count, &arguments) { data, size in
        FuzzTargets.configuration(data.map { Data(bytes: $0, count: size) } ?? Data())
        return 0
    }
}
