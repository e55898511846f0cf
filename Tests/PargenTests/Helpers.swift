import Foundation
import Pargen

func validated(_ request: GenerationRequest, id: String = "r") -> ValidatedRequest {
    try! RequestValidator().validate(request, fallbackID: id)
}

func temporaryDirectory() -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("pargen-tests-\(UUID().uuidString)")
    try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}
