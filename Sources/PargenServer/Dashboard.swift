import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Pargen

/// The dashboard at `/`: pages rendered on the server from the store and the engine, kept live by the same
/// `/v1/events` stream as the API, with no build step and no asset from elsewhere (CSS, script and charts are
/// inline; charts are SVG).
///
/// A browser signs in with an API key (`/login`), kept in an HttpOnly, SameSite=Strict cookie that the API
/// routes also accept; a change made with the cookie must carry `X-Requested-With: pargen-dashboard`, which a
/// page of another site cannot send without the server's consent (CSRF).
extension PargenServer {
    static let sessionCookie = "pargen_key"

    func addDashboardRoutes(_ router: Router<PargenRequestContext>) {
        router.get("/") { request, _ -> Response in
            guard let principal = try await self.cookiePrincipal(request) else { return Self.html(.ok, Self.loginPage(error: nil)) }
            return Self.html(.ok, try await self.dashboardPage(request, principal: principal))
        }
        router.get("login") { request, _ -> Response in
            guard let key = request.uri.queryParameters["key"].map(String.init) else {
                return Self.html(.ok, Self.loginPage(error: nil))
            }
            return try await self.signIn(key)
        }
        router.post("login") { request, _ -> Response in
            var request = request
            let body = String(buffer: try await request.collectBody(upTo: 4096))
            let fields = Dictionary(
                body.split(separator: "&").map { pair -> (String, String) in
                    let parts = pair.split(separator: "=", maxSplits: 1).map {
                        String($0).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? ""
                    }
                    return (parts.first ?? "", parts.count > 1 ? parts[1] : "")
                },
                uniquingKeysWith: { _, last in last }
            )
            return try await self.signIn(fields["key"] ?? "")
        }
        router.post("logout") { _, _ -> Response in
            Response(
                status: .seeOther,
                headers: [
                    .location: "/",
                    .setCookie: "\(Self.sessionCookie)=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
                ]
            )
        }
        router.get("jobs/{id}") { request, context -> Response in
            guard let principal = try await self.cookiePrincipal(request) else { return Self.html(.ok, Self.loginPage(error: nil)) }
            let id = try context.parameters.require("id")
            guard let record = try await self.generator.store.job(JobID(id)), principal.owns(project: record.request.project) else {
                return Self.html(.notFound, Self.page(title: "Not found", body: "<p>No job \(esc(String(id.prefix(200)))).</p>"))
            }
            return Self.html(.ok, self.jobPage(record, principal: principal))
        }
    }

    private func signIn(_ key: String) async throws -> Response {
        guard try await keyRing.principal(for: key) != nil else {
            return Self.html(.unauthorized, Self.loginPage(error: "That key is not known."))
        }
        return Response(
            status: .seeOther,
            headers: [
                .location: "/",
                .setCookie: "\(Self.sessionCookie)=\(key); Path=/; HttpOnly; SameSite=Strict; Max-Age=43200",
            ]
        )
    }

    func cookiePrincipal(_ request: Request) async throws -> Principal? {
        guard let key = Self.cookie(Self.sessionCookie, in: request) else { return nil }
        return try await keyRing.principal(for: key)
    }

    static func cookie(_ name: String, in request: Request) -> String? {
        for header in request.headers[values: .cookie] {
            for part in header.split(separator: ";") {
                let pair = part.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                if pair.count == 2, pair[0] == name { return pair[1] }
            }
        }
        return nil
    }

    static func html(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(
            status: status,
            headers: [
                .contentType: "text/html; charset=utf-8",
                .cacheControl: "no-store",
                // Nothing but this origin: the page has no asset from elsewhere.
                .contentSecurityPolicy:
                    "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src 'self' data:; media-src 'self'",
            ],
            body: .init(byteBuffer: ByteBuffer(string: text))
        )
    }

    // MARK: Pages

    static func page(title: String, body: String, script: String = "") -> String {
        """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><title>\(esc(title)) · Pargen</title>
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <style>\(css)</style></head>
        <body data-live="connecting" data-updates="0">
        <header><strong>Pargen</strong> <span class="muted">\(esc(title))</span>
        <form method="post" action="/logout" class="right"><button>Sign out</button></form></header>
        <main>\(body)</main>
        <script>\(script)</script>
        </body></html>
        """
    }

    static func loginPage(error: String?) -> String {
        page(
            title: "Sign in",
            body: """
                <section class="card narrow"><h2>Sign in with an API key</h2>
                \(error.map { "<p class=\"alert\">\(esc($0))</p>" } ?? "")
                <form method="post" action="/login"><input name="key" type="password" placeholder="key_…" size="60" autofocus>
                <button>Sign in</button></form>
                <p class="muted">Make one with <code>pargen keys create --tenant T --project P</code>.</p></section>
                """
        )
    }

    func dashboardPage(_ request: Request, principal: Principal) async throws -> String {
        let parameters = request.uri.queryParameters
        let project = try project(parameters["project"].map(String.init), principal)
        let records = try await generator.store.jobs(matching: JobQuery(project: principal.qualified(project)))
        var counts: [JobState: Int] = [:]
        for record in records { counts[record.state, default: 0] += 1 }
        let countCells = JobState.allCases.map { state in
            "<div class=\"count\"><span class=\"n\" data-count=\"\(state.rawValue)\">\(counts[state, default: 0])</span><span class=\"muted\">\(state.rawValue.replacingOccurrences(of: "_", with: " "))</span></div>"
        }.joined()

        // Campaigns with their burn-down.
        let byCampaign = Dictionary(grouping: records, by: \.request.campaign)
        var campaignRows = ""
        for (stored, jobs) in byCampaign.sorted(by: { $0.key < $1.key }) {
            let name = principal.local(stored) ?? stored
            let summary = CampaignSummary(jobs)
            let budget = generator.costMonitor.limit(of: .campaign(stored))
            campaignRows += """
                <tr data-campaign="\(esc(name))"><td><a href="/?campaign=\(esc(name))">\(esc(name))</a></td>
                <td class="num" data-field="progress">\(summary.finished)/\(jobs.count)</td>
                <td class="num" data-field="spent">$\(summary.ledger.charged.decimalString)</td>
                <td class="num" data-field="reserved">$\(summary.ledger.pending.decimalString)</td>
                <td class="num" data-field="projected">\(summary.projected.map { "$" + $0.decimalString } ?? "–")</td>
                <td class="num" data-field="budget">\(budget.map { "$" + $0.decimalString } ?? "none")</td>
                <td data-field="burn">\(Self.burnDown(spent: summary.ledger.charged, reserved: summary.ledger.pending, projected: summary.projected, budget: budget))</td>
                <td><button class="pause" data-campaign="\(esc(name))" data-committed="\((summary.ledger.charged + summary.ledger.pending).decimalString)">\(budget != nil && budget! <= summary.ledger.charged + summary.ledger.pending ? "Resume" : "Pause")</button></td></tr>
                """
        }

        // Providers' quotas.
        let stats = await generator.systemStats()
        let health = Dictionary(uniqueKeysWithValues: stats.loadBalancer.map { ($0.name, $0) })
        var providerRows = ""
        for descriptor in generator.providerDescriptors {
            let name = descriptor.name
            let slots = stats.resourcePool.providers[name]
            let activity = stats.providers[name] ?? ProviderActivity()
            let windowUsed = slots.flatMap { s in s.windowLimit.map { limit in limit - (s.windowRoom ?? limit) } }
            providerRows += """
                <tr data-provider="\(esc(name))"><td>\(esc(name))</td>
                <td class="num" data-field="window">\(windowUsed.map(String.init) ?? "–")/\(slots?.windowLimit.map(String.init) ?? "∞")</td>
                <td class="num" data-field="slots">\(slots?.inFlight ?? 0)/\(slots?.limit ?? 0)</td>
                <td class="num" data-field="throttled">\(activity.throttled)</td>
                <td class="num" data-field="cooldown">\(slots?.cooldownLeft.map { String(format: "%.1f s", $0.seconds) } ?? "–")</td>
                <td data-field="circuit" class="circuit-\(health[name]?.circuit.rawValue ?? "closed")">\(health[name]?.circuit.rawValue ?? "closed")</td>
                <td data-field="spark"><svg class="spark" width="120" height="24" viewBox="0 0 120 24"><polyline points="" fill="none" stroke="#2563eb" stroke-width="1.5"/></svg></td></tr>
                """
        }

        // The job table, filtered as the query says, newest first.
        let stateFilter = parameters["state"].flatMap { JobState(rawValue: String($0)) }
        let campaignFilter = parameters["campaign"].map { principal.qualified(String($0)) }
        let userFilter = parameters["user"].map(String.init)
        let providerFilter = parameters["provider"].map(String.init)
        let shown = records.reversed().filter { record in
            (stateFilter.map { $0 == record.state } ?? true)
                && (campaignFilter.map { $0 == record.request.campaign } ?? true)
                && (userFilter.map { $0 == record.request.user } ?? true)
                && (providerFilter.map { $0 == record.provider } ?? true)
        }.prefix(100)
        let jobRows = shown.map { record in
            """
            <tr data-job="\(esc(record.id.rawValue))"><td><input type="checkbox" value="\(esc(record.id.rawValue))"></td>
            <td><a href="/jobs/\(esc(record.id.rawValue))">\(esc(record.id.rawValue))</a></td>
            <td data-field="state">\(record.state.rawValue)</td><td>\(record.request.kind.rawValue)</td>
            <td class="prompt">\(esc(String(record.request.prompt.prefix(80))))</td><td>\(esc(record.request.user))</td>
            <td>\(esc(principal.local(record.request.campaign) ?? record.request.campaign))</td>
            <td>\(esc(record.provider ?? "–"))</td><td class="num">$\(record.ledger.charged.decimalString)</td></tr>
            """
        }.joined()
        func filterValue(_ name: Substring) -> String { esc(parameters[name].map(String.init) ?? "") }
        let body = """
            <section class="card"><h2>Project \(esc(project)) <span class="live" id="live">connecting…</span></h2>
            <div class="counts">\(countCells)</div></section>
            <section class="card"><h2>Campaigns</h2>
            <table id="campaigns"><thead><tr><th>Campaign</th><th>Done</th><th>Spent</th><th>Reserved</th><th>Projected</th><th>Budget</th><th>Burn-down</th><th></th></tr></thead>
            <tbody>\(campaignRows)</tbody></table>
            <p class="muted">The bar: spent (dark), reserved (mid), projected (light) against the budget (the line); it turns amber at 80 % of the budget and red past it. Pause sets the campaign's budget to what is committed, so nothing new starts; Resume removes that limit.</p></section>
            <section class="card"><h2>Provider quotas</h2>
            <table id="providers"><thead><tr><th>Provider</th><th>Window used</th><th>Slots</th><th>429s</th><th>Cooldown</th><th>Circuit</th><th>Window use over time</th></tr></thead>
            <tbody>\(providerRows)</tbody></table></section>
            <section class="card"><h2>Jobs</h2>
            <form method="get" action="/" class="filters">
            <select name="state"><option value="">any state</option>\(JobState.allCases.map { "<option\(stateFilter == $0 ? " selected" : "")>\($0.rawValue)</option>" }.joined())</select>
            <input name="campaign" placeholder="campaign" value="\(filterValue("campaign"))"><input name="user" placeholder="user" value="\(filterValue("user"))">
            <input name="provider" placeholder="provider" value="\(filterValue("provider"))"><button>Filter</button></form>
            <p><button id="retry">Retry selected</button> <button id="cancel">Cancel selected</button> <span id="bulk" class="muted"></span></p>
            <table id="jobs"><thead><tr><th></th><th>Job</th><th>State</th><th>Kind</th><th>Prompt</th><th>User</th><th>Campaign</th><th>Provider</th><th>Cost</th></tr></thead>
            <tbody>\(jobRows)</tbody></table></section>
            """
        return Self.page(title: "\(principal.tenant) · \(project)", body: body, script: Self.liveScript(project: project))
    }

    func jobPage(_ record: JobRecord, principal: Principal) -> String {
        let request = record.request
        let attempts = record.errors.enumerated().map { index, error in
            "<tr><td>\(index + 1)</td><td>\(esc(error.code.description))</td><td>\(esc(error.provider ?? "–"))</td><td>\(esc(error.message))</td></tr>"
        }.joined()
        var player = "<p class=\"muted\">No media yet (\(record.state.rawValue)).</p>"
        if let outcome = record.outcome {
            let source = "/v1/jobs/\(esc(record.id.rawValue))/artifact"
            let type = outcome.artifact.contentType
            player =
                type.hasPrefix("audio/")
                ? "<audio controls preload=\"metadata\" src=\"\(source)\"></audio>"
                : type.hasPrefix("video/")
                    ? "<video controls preload=\"metadata\" src=\"\(source)\" width=\"480\"></video>"
                    : "<img alt=\"the generated media\" src=\"\(source)\" width=\"480\">"
            player += "<p class=\"muted\">\(outcome.artifact.byteCount) bytes · \(esc(outcome.provider)) · sha256 \(esc(outcome.artifact.sha256))</p>"
        }
        let body = """
            <section class="card"><h2>Job \(esc(record.id.rawValue)) <span data-field="state">\(record.state.rawValue)</span></h2>
            <p class="prompt">\(esc(request.prompt))</p>
            <p class="muted">\(request.kind.rawValue) · \(esc(principal.local(request.campaign) ?? request.campaign)) · user \(esc(request.user)) · \(record.attempts) attempts · charged $\(record.ledger.charged.decimalString)</p>
            \(player)</section>
            <section class="card"><h2>Errors, oldest first</h2>
            <table><thead><tr><th>#</th><th>Code</th><th>Provider</th><th>Message</th></tr></thead><tbody>\(attempts.isEmpty ? "<tr><td colspan=4 class=muted>none</td></tr>" : attempts)</tbody></table>
            <p><a href="/">← back</a></p></section>
            """
        return Self.page(title: "Job \(record.id.rawValue)", body: body)
    }

    /// A horizontal bar: spent, reserved and projected against the budget, as inline SVG.
    static func burnDown(spent: Money, reserved: Money, projected: Money?, budget: Money?) -> String {
        let top = max(budget ?? .zero, projected ?? .zero, spent + reserved, Money(nanos: 1))
        func width(_ amount: Money) -> Double { max(0, min(240, 240 * amount.ratio(to: top))) }
        let committed = spent + reserved
        let used = budget.map { committed.ratio(to: max($0, Money(nanos: 1))) } ?? 0
        let colour = used >= 1 ? "#dc2626" : used >= 0.8 ? "#d97706" : "#1e3a8a"
        let alert =
            budget != nil && used >= 0.8
            ? "<text x=\"246\" y=\"13\" font-size=\"11\" fill=\"\(colour)\" class=\"budget-alert\">\(Int(used * 100))%</text>" : ""
        let budgetLine =
            budget.map { "<line x1=\"\(width($0))\" x2=\"\(width($0))\" y1=\"0\" y2=\"18\" stroke=\"#111\" stroke-width=\"2\" class=\"budget-line\"/>" } ?? ""
        return """
            <svg class="burn" width="280" height="18" viewBox="0 0 280 18" role="img" aria-label="spent \(spent.decimalString), reserved \(reserved.decimalString)">\
            <rect x="0" y="3" width="\(width(projected ?? committed))" height="12" fill="#bfdbfe" class="projected"/>\
            <rect x="0" y="3" width="\(width(committed))" height="12" fill="#60a5fa" class="reserved"/>\
            <rect x="0" y="3" width="\(width(spent))" height="12" fill="\(colour)" class="spent"/>\(budgetLine)\(alert)</svg>
            """
    }

    /// Keeps the page live: each event (debounced) re-reads the counts, the campaigns and the providers through
    /// the API, and updates the table's state cells at once.
    static func liveScript(project: String) -> String {
        """
        const H = {'X-Requested-With': 'pargen-dashboard'};
        const body = document.body, live = document.getElementById('live');
        // What the server rendered, so a reader (the browser test) can tell live changes from the first render.
        body.dataset.initial = JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-count]')].map(c => [c.dataset.count, Number(c.textContent)])));
        const history = {};
        let timer = null;
        function bump() { body.dataset.updates = String(Number(body.dataset.updates) + 1); }
        async function refresh() {
          timer = null;
          const stats = await (await fetch('/v1/stats?project=\(project)')).json();
          for (const [state, n] of Object.entries(stats.jobs || {})) {
            const cell = document.querySelector('[data-count="' + state + '"]'); if (cell) cell.textContent = n;
          }
          for (const row of document.querySelectorAll('#campaigns tr[data-campaign]')) {
            const c = await (await fetch('/v1/campaigns/' + encodeURIComponent(row.dataset.campaign) + '?project=\(project)')).json();
            if (!c.jobs) continue;
            const done = Object.entries(c.counts).filter(([s]) => s !== 'available' && s !== 'running').reduce((a, [, n]) => a + n, 0);
            row.querySelector('[data-field=progress]').textContent = done + '/' + c.jobs;
            row.querySelector('[data-field=spent]').textContent = '$' + c.spent;
            row.querySelector('[data-field=reserved]').textContent = '$' + c.reserved;
            row.querySelector('[data-field=projected]').textContent = c.projected ? '$' + c.projected : '–';
            const top = Math.max(Number(c.budget || 0), Number(c.projected || 0), Number(c.spent) + Number(c.reserved), 1e-9);
            const w = v => Math.max(0, Math.min(240, 240 * Number(v) / top));
            const svg = row.querySelector('svg.burn');
            svg.querySelector('.spent').setAttribute('width', w(c.spent));
            svg.querySelector('.reserved').setAttribute('width', w(Number(c.spent) + Number(c.reserved)));
            svg.querySelector('.projected').setAttribute('width', w(c.projected || (Number(c.spent) + Number(c.reserved))));
          }
          const providers = await (await fetch('/v1/providers')).json();
          for (const p of providers.data || []) {
            const row = document.querySelector('#providers tr[data-provider="' + p.name + '"]'); if (!row) continue;
            const used = p.window && p.window.limit != null ? p.window.limit - p.window.room : null;
            row.querySelector('[data-field=window]').textContent = (used == null ? '–' : used) + '/' + (p.window && p.window.limit != null ? p.window.limit : '∞');
            row.querySelector('[data-field=slots]').textContent = p.slots ? p.slots.in_use + '/' + p.slots.limit : '–';
            row.querySelector('[data-field=throttled]').textContent = p.throttled;
            row.querySelector('[data-field=cooldown]').textContent = p.cooldown_seconds ? p.cooldown_seconds.toFixed(1) + ' s' : '–';
            row.querySelector('[data-field=circuit]').textContent = p.circuit || 'closed';
            const h = history[p.name] = (history[p.name] || []).concat([used == null ? 0 : used / Math.max(1, p.window.limit)]).slice(-40);
            row.querySelector('polyline').setAttribute('points', h.map((v, i) => (i * 3) + ',' + (22 - v * 20).toFixed(1)).join(' '));
          }
          bump();
        }
        function later() { if (!timer) timer = setTimeout(refresh, 400); }
        const events = new EventSource('/v1/events?project=\(project)');
        events.onopen = () => { body.dataset.live = 'connected'; live.textContent = 'live'; };
        events.onerror = () => { body.dataset.live = 'reconnecting'; live.textContent = 'reconnecting…'; };
        for (const type of ['job.status', 'job.finished', 'quota.hold', 'budget.hold', 'budget.alert']) {
          events.addEventListener(type, e => {
            const d = JSON.parse(e.data);
            const cell = d.job_id && document.querySelector('#jobs tr[data-job="' + d.job_id + '"] [data-field=state]');
            if (cell) cell.textContent = d.state || d.status;
            later();
          });
        }
        setInterval(later, 5000);
        async function bulk(action) {
          const ids = [...document.querySelectorAll('#jobs input:checked')].map(i => i.value);
          let ok = 0;
          for (const id of ids) {
            const url = action === 'retry' ? '/v1/dead-letters/' + id + '/retry' : '/v1/jobs/' + id + '/cancel';
            const r = await fetch(url, {method: 'POST', headers: H}); if (r.ok) ok++;
          }
          document.getElementById('bulk').textContent = action + ': ' + ok + ' of ' + ids.length + ' done';
          later();
        }
        document.getElementById('retry').onclick = () => bulk('retry');
        document.getElementById('cancel').onclick = () => bulk('cancel');
        for (const button of document.querySelectorAll('button.pause')) {
          button.onclick = async () => {
            const pausing = button.textContent === 'Pause';
            await fetch('/v1/budgets', {method: 'PUT', headers: Object.assign({'Content-Type': 'application/json'}, H),
              body: JSON.stringify({scope: 'campaign', name: button.dataset.campaign, limit: pausing ? button.dataset.committed : null})});
            button.textContent = pausing ? 'Resume' : 'Pause';
            later();
          };
        }
        """
    }

    static let css = """
        body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f8fafc;color:#0f172a}
        header{display:flex;gap:1em;align-items:center;padding:.6em 1.2em;background:#0f172a;color:#f8fafc}
        header .right{margin-left:auto} main{padding:1em 1.2em;display:grid;gap:1em}
        .card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:.8em 1em}.narrow{max-width:40em}
        h2{font-size:16px;margin:.2em 0 .6em}.muted{color:#64748b}.alert{color:#b91c1c}
        .counts{display:flex;gap:1.5em;flex-wrap:wrap}.count{display:flex;flex-direction:column}.count .n{font-size:24px;font-weight:600}
        table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #f1f5f9}
        .num{text-align:right;font-variant-numeric:tabular-nums}.prompt{max-width:28em;overflow:hidden;text-overflow:ellipsis}
        .live{font-size:12px;color:#16a34a;margin-left:.6em}.circuit-open{color:#dc2626}.circuit-half_open{color:#d97706}
        .filters{display:flex;gap:.4em;margin-bottom:.5em}
        """
}

/// A campaign's counts and money, as the API and the dashboard show them.
struct CampaignSummary {
    var counts: [JobState: Int] = [:]
    var ledger = CostLedger()
    var finished = 0
    var remaining = 0
    /// Charged and reserved, plus each job still to run at the succeeded jobs' average; `nil` until one succeeded.
    var projected: Money?
    /// What the jobs served by a cache or an identical request would have cost to generate, and how many.
    var saved: Money = .zero
    var reused = 0

    init(_ records: [JobRecord]) {
        for record in records {
            counts[record.state, default: 0] += 1
            if let saved = record.outcome?.saved, saved > .zero {
                self.saved += saved
                reused += 1
            }
            ledger = ledger + record.ledger
            if record.state.isFinal { finished += 1 }
        }
        remaining = records.count - finished
        let succeeded = counts[.succeeded, default: 0]
        if succeeded > 0 {
            projected = ledger.charged + ledger.pending + Money(nanos: ledger.charged.nanos / Int64(succeeded)) * Int64(remaining)
        } else if remaining == 0 {
            projected = ledger.charged
        }
    }
}

/// Text for HTML: `&`, `<`, `>`, `"` and `'` escaped.
func esc(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.utf8.count)
    for character in text {
        switch character {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.append(character)
        }
    }
    return out
}
