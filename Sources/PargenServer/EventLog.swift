import DequeModule
import Foundation
import Pargen
import Synchronization

/// One event as the service keeps it for `/v1/events`: numbered, with the stored project and campaign it
/// belongs to (for tenant scoping and filters).
struct ServiceEvent: Sendable {
    var id: UInt64
    /// `job.status`, `job.finished`, `quota.hold`, `budget.hold` or `budget.alert`.
    var type: String
    var project: String?
    var campaign: String?
    var jobID: String?
    var fields: [String: JSONValue]

    /// The event as `principal` sees it (its own project and campaign names).
    func data(for principal: Principal) -> JSONValue {
        var object = fields
        object["type"] = .string(type)
        object["id"] = .string(String(id))
        if let project { object["project"] = .string(principal.local(project) ?? project) }
        if let campaign { object["campaign"] = .string(principal.local(campaign) ?? campaign) }
        if let jobID { object["job_id"] = .string(jobID) }
        return .object(object)
    }

    /// Whether `principal` may see the event, and it passes the stream's filters (stored names).
    func visible(to principal: Principal, job: String?, project: String?, campaign: String?) -> Bool {
        if let eventProject = self.project {
            guard principal.owns(project: eventProject) else { return false }
        } else if let eventCampaign = self.campaign {
            // A campaign's budget alert: the campaign's name carries the tenant.
            guard principal.local(eventCampaign) != nil else { return false }
        } else {
            // Global (a global budget): the operators' business, not a tenant's.
            return false
        }
        if let job, jobID != job { return false }
        if let project, self.project != project { return false }
        if let campaign, self.campaign != campaign { return false }
        return true
    }
}

/// The events of the last while, numbered, for live streams and their resumption.
///
/// Ids rise through the process's life: they start at the process's start time in microseconds, so that an id from an earlier process is always lower than this one's, and a client
/// that resumes across a restart gets everything this process has (what the earlier one had not sent is gone
/// with it: a reconnect after a restart re-reads the jobs it follows). Within a process a resume is gapless as
/// long as the client is no more than ``capacity`` events behind; further behind, the stream says `reset`.
final class EventLog: Sendable {
    private struct State {
        var events: Deque<ServiceEvent> = []
        var nextID: UInt64
        /// This process's first id.
        let firstID: UInt64
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 0
        var closed = false
    }

    let capacity: Int
    private let state: Mutex<State>

    init(capacity: Int, firstID: UInt64 = UInt64(Date().timeIntervalSince1970 * 1_000_000)) {
        self.capacity = max(1, capacity)
        state = Mutex(State(nextID: firstID, firstID: firstID))
    }

    /// The id of the last event appended (the id a new stream starts after).
    var lastID: UInt64 { state.withLock { $0.nextID - 1 } }

    @discardableResult
    func append(type: String, project: String?, campaign: String?, jobID: String?, fields: [String: JSONValue])
        -> UInt64
    {
        let (id, waiters) = state.withLock { state -> (UInt64, [CheckedContinuation<Void, Never>]) in
            let id = state.nextID
            state.nextID += 1
            state.events.append(
                ServiceEvent(id: id, type: type, project: project, campaign: campaign, jobID: jobID, fields: fields)
            )
            if state.events.count > capacity { state.events.removeFirst() }
            defer { state.waiters.removeAll() }
            return (id, Array(state.waiters.values))
        }
        for waiter in waiters { waiter.resume() }
        return id
    }

    /// Events after `id`, oldest first, up to `limit`; `gap` when some after `id` have been dropped.
    func events(after id: UInt64, limit: Int = 1000) -> (events: [ServiceEvent], gap: Bool) {
        state.withLock { state in
            guard let first = state.events.first else { return ([], false) }
            // Behind the oldest event kept, after some were dropped: the client missed those.
            let gap = id + 1 < first.id && first.id > state.firstID
            // Ids are consecutive within the process: the index of `id + 1` is computed, not searched.
            let start = id < first.id ? 0 : Int(min(UInt64(state.events.count), id + 1 - first.id))
            let end = min(state.events.count, start + limit)
            return (Array(state.events[start..<end]), gap)
        }
    }

    /// Returns when an event after `id` exists, the log closes, or `timeout` passes.
    func wait(after id: UInt64, timeout: Duration) async {
        let waiter = state.withLock { state -> UInt64? in
            guard !state.closed, state.nextID - 1 <= id else { return nil }
            state.nextWaiter += 1
            return state.nextWaiter
        }
        guard let waiter else { return }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            self.wake(waiter)
        }
        await withCheckedContinuation { continuation in
            let resumeNow = state.withLock { state -> Bool in
                if state.closed || state.nextID - 1 > id { return true }
                state.waiters[waiter] = continuation
                return false
            }
            if resumeNow { continuation.resume() }
        }
        timer.cancel()
    }

    private func wake(_ waiter: UInt64) {
        state.withLock { $0.waiters.removeValue(forKey: waiter) }?.resume()
    }

    /// Wakes every stream for good (the server is shutting down).
    func close() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.closed = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    var isClosed: Bool { state.withLock { $0.closed } }
}
