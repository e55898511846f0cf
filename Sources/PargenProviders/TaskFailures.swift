public import Pargen

/// How a provider's *task* failures are classified: a task that the provider accepted and then reported as
/// failed (not a refused submission, which each adapter classifies from its HTTP answer).
///
/// | provider | terminal: a new task cannot succeed | retryable: tried again on a new task | unknown: `task_failed`, at most `retry.failedTasks` new tasks |
/// |---|---|---|---|
/// | OpenAI (Sora `failed`, `error.code`) | `moderation_blocked`, `content_policy_violation`, `input_moderation`, `output_moderation`, `invalid_request`, `invalid_prompt`, `invalid_value`; or a message that names moderation, policy or safety | `video_generation_failed`, `internal_error`, `server_error`, `processing_error`, `timeout`, `capacity_exceeded`, `overloaded`; or a message that names an internal error, a time-out or capacity | anything else |
/// | MiniMax (video `Fail`/`Failed`, `base_resp.status_code`) | 1026 and 1027 (sensitive input or output), 1042 (invisible characters), 2013 (parameters), 1004 and 2049 (auth), 1008 (balance) | 1000, 1001, 1013, 1024, 1033 (unknown, time-out, internal), 1002, 1039, 1041, 2045 (load) | 0 or any other code |
/// | Runway (`FAILED`, `failureCode`) | `SAFETY.*`, `INPUT_PREPROCESSING.SAFETY.*`, `ASSET.INVALID*` | `INTERNAL.*`, `INPUT_PREPROCESSING.INTERNAL` | no code, or any other |
///
/// Sources: the providers' error pages as summarised in `shared/reference/providers.md` (MiniMax's error-code
/// table and Runway's task-failure families are documented; OpenAI's Sora failure codes are not published as a
/// list, so the OpenAI row is the codes seen in its answers and the SDK, and the message rule covers the rest).
///
/// None of the three bills a task that failed (OpenAI and MiniMax charge for generated seconds; Runway refunds
/// the credits of a failed task), so every task failure records a charge of zero in the job's history.
public enum TaskFailures {
    /// OpenAI Sora: `{"status": "failed", "error": {"code", "message"}}`.
    public static func openAI(code: String?, message: String) -> GenerationError.Code {
        let code = code?.lowercased() ?? ""
        let text = message.lowercased()
        let refusals: Set<String> = [
            "moderation_blocked", "content_policy_violation", "input_moderation", "output_moderation",
            "invalid_request", "invalid_prompt", "invalid_value",
        ]
        let failures: Set<String> = [
            "video_generation_failed", "internal_error", "server_error", "processing_error", "timeout",
            "capacity_exceeded", "overloaded",
        ]
        if refusals.contains(code) { return .terminal }
        if failures.contains(code) { return .transient }
        if ["moderation", "policy", "safety"].contains(where: text.contains) { return .terminal }
        if ["internal", "timed out", "timeout", "capacity", "overloaded", "try again"].contains(where: text.contains) {
            return .transient
        }
        return .taskFailed
    }

    /// MiniMax video: `{"status": "Fail", "base_resp": {"status_code", "status_msg"}}`.
    public static func miniMax(statusCode: Int?) -> GenerationError.Code {
        switch statusCode {
        case 1026, 1027, 1042, 2013, 1004, 2049, 1008: .terminal
        case 1000, 1001, 1013, 1024, 1033, 1002, 1039, 1041, 2045: .transient
        default: .taskFailed
        }
    }

    /// Runway: `{"status": "FAILED", "failure", "failureCode"}`.
    public static func runway(failureCode: String?) -> GenerationError.Code {
        guard let code = failureCode?.uppercased(), !code.isEmpty else { return .taskFailed }
        if code.hasPrefix("SAFETY") || code.hasPrefix("INPUT_PREPROCESSING.SAFETY") || code.hasPrefix("ASSET.INVALID") {
            return .terminal
        }
        if code.hasPrefix("INTERNAL") || code == "INPUT_PREPROCESSING.INTERNAL" { return .transient }
        return .taskFailed
    }

    /// The error for a failed task: the class, the provider's code and reason, and a charge of zero.
    static func error(
        _ code: GenerationError.Code,
        task id: String,
        reason: String,
        provider: String,
        providerCode: String
    ) -> GenerationError {
        var error = GenerationError(code, "task \(id) failed: \(reason)", provider: provider, providerCode: providerCode)
        error.taskID = id
        error.charged = .zero
        return error
    }
}
