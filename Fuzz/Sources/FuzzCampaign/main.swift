import PargenFuzzing

// SwiftPM links an executable's entry as `<module>_main`: this is it, and it hands the target to libFuzzer.
@_cdecl("FuzzCampaign_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    FuzzTargets.libFuzzerMain(argc, argv, target: "campaign")
}
