/// The service's OpenAPI 3.1 description, served at `/openapi.yaml`. `ServerAPITests` checks that its paths and
/// methods are exactly the router's.
enum OpenAPIDocument {
    static let yaml = #"""
        openapi: 3.1.0
        info:
          title: Pargen
          version: "1"
          description: |
            Parallel audio and video generation across providers, within quotas and budgets.
            Every /v1 route takes `Authorization: Bearer KEY` (`pargen keys create`) and sees only the key's
            tenant. Errors are RFC 9457 problems (application/problem+json) that name the field. A query
            parameter that a route does not list is refused with 422, naming it.
        servers:
          - url: http://127.0.0.1:8080
        security:
          - bearer: []
        paths:
          /healthz:
            get:
              summary: The process answers.
              security: []
              responses:
                "200": { description: Alive. }
          /readyz:
            get:
              summary: The job store answers and the engine takes work.
              security: []
              responses:
                "200": { description: Ready. }
                "503": { $ref: "#/components/responses/Problem" }
          /:
            get:
              summary: The dashboard (HTML), or its sign-in page without a session.
              tags: [dashboard]
              security: []
              responses:
                "200": { description: An HTML page. }
          /login:
            get:
              summary: Sign in with ?key=KEY (sets the dashboard's HttpOnly, SameSite=Strict cookie).
              tags: [dashboard]
              security: []
              responses:
                "303": { description: Signed in; to the dashboard. }
                "401": { description: The key is not known. }
            post:
              summary: Sign in with a form field key.
              tags: [dashboard]
              security: []
              responses:
                "303": { description: Signed in; to the dashboard. }
                "401": { description: The key is not known. }
          /logout:
            post:
              summary: Sign out (clears the cookie).
              tags: [dashboard]
              security: []
              responses:
                "303": { description: Signed out. }
          /jobs/{id}:
            get:
              summary: A job's page, with every attempt's error and a player for its media.
              tags: [dashboard]
              security: []
              parameters: [{ $ref: "#/components/parameters/ID" }]
              responses:
                "200": { description: An HTML page. }
                "404": { description: Not the session's job. }
          /metrics:
            get:
              summary: Prometheus metrics (jobs by state, admissions and waits per limit, latency, spend, cache, webhooks).
              security: []
              responses:
                "200": { description: The metrics in Prometheus text format. }
          /openapi.yaml:
            get:
              summary: This document.
              security: []
              responses:
                "200": { description: The OpenAPI document. }
          /v1/jobs:
            post:
              summary: Create one job, or several from an array.
              description: |
                A batch creates its valid jobs and lists the others under `errors` with their position
                (`[2].prompt`). `Idempotency-Key` replays the first answer for the same body (24 h); a job's own
                `idempotency_key` field returns the job already made with it. `Prefer: wait=N` holds the answer
                up to N seconds for the results.
              parameters:
                - $ref: "#/components/parameters/IdempotencyKey"
                - { name: Prefer, in: header, schema: { type: string, examples: ["wait=10"] } }
              requestBody:
                required: true
                content:
                  application/json:
                    schema:
                      oneOf:
                        - $ref: "#/components/schemas/JobCreate"
                        - { type: array, items: { $ref: "#/components/schemas/JobCreate" }, maxItems: 1000 }
              responses:
                "200": { description: Done within the wait (Prefer). , content: { application/json: { schema: { $ref: "#/components/schemas/JobOrList" } } } }
                "202": { description: Accepted., content: { application/json: { schema: { $ref: "#/components/schemas/JobOrList" } } } }
                "400": { $ref: "#/components/responses/Problem" }
                "409": { $ref: "#/components/responses/Problem" }
                "413": { $ref: "#/components/responses/Problem" }
                "422": { $ref: "#/components/responses/Problem" }
                "429": { $ref: "#/components/responses/Problem" }
            get:
              summary: List jobs, oldest first, a page at a time.
              parameters:
                - { name: state, in: query, schema: { type: string }, description: "Comma-separated states." }
                - { name: user, in: query, schema: { type: string } }
                - { name: project, in: query, schema: { type: string }, description: "Admin keys: another project of the tenant." }
                - { name: campaign, in: query, schema: { type: string } }
                - { name: provider, in: query, schema: { type: string } }
                - { name: limit, in: query, schema: { type: integer, minimum: 1, maximum: 1000, default: 100 } }
                - { name: cursor, in: query, schema: { type: string }, description: "next_cursor of the previous page." }
              responses:
                "200": { description: A page., content: { application/json: { schema: { $ref: "#/components/schemas/JobList" } } } }
                "422": { $ref: "#/components/responses/Problem" }
          /v1/jobs/{id}:
            get:
              summary: One job, with its attempts' errors, cost and artifact.
              parameters: [{ $ref: "#/components/parameters/ID" }]
              responses:
                "200": { description: The job., content: { application/json: { schema: { $ref: "#/components/schemas/Job" } } } }
                "404": { $ref: "#/components/responses/Problem" }
          /v1/jobs/{id}/cancel:
            post:
              summary: Cancel a job (it becomes a dead letter with a cancelled error).
              description: |
                A queued job, or one this server holds waiting for a quota or a slot, is cancelled at once (200).
                A job whose task a provider is running is cancelled at the provider where the provider can do
                that (Runway): 202, and it ends cancelled when its call sees the task stop. Otherwise 409: the call
                runs to its end.
              parameters: [{ $ref: "#/components/parameters/ID" }, { $ref: "#/components/parameters/IdempotencyKey" }]
              responses:
                "200": { description: Cancelled., content: { application/json: { schema: { $ref: "#/components/schemas/Job" } } } }
                "202": { description: Being cancelled at the provider., content: { application/json: { schema: { $ref: "#/components/schemas/Job" } } } }
                "404": { $ref: "#/components/responses/Problem" }
                "409": { $ref: "#/components/responses/Problem" }
          /v1/jobs/{id}/artifact:
            get:
              summary: The generated file, with Range support.
              parameters:
                - { $ref: "#/components/parameters/ID" }
                - { name: Range, in: header, schema: { type: string, examples: ["bytes=0-1023"] } }
              responses:
                "200": { description: The whole file. }
                "206": { description: The range asked for. }
                "404": { $ref: "#/components/responses/Problem" }
                "410": { $ref: "#/components/responses/Problem" }
                "416": { $ref: "#/components/responses/Problem" }
          /v1/campaigns:
            post:
              summary: Upload a campaign file (CSV or JSONL); each bad line is reported with its line and field.
              parameters:
                - { name: name, in: query, required: true, schema: { type: string } }
                - { name: project, in: query, schema: { type: string } }
                - name: cancel_removed
                  in: query
                  description: >-
                    true cancels the campaign's waiting jobs of lines this upload no longer has (removed, or the
                    old version of an edited line); their ids come back in cancelled_job_ids.
                  schema: { type: boolean, default: false }
                - { $ref: "#/components/parameters/IdempotencyKey" }
              requestBody:
                required: true
                content:
                  text/csv: { schema: { type: string } }
                  application/jsonl: { schema: { type: string } }
                  application/x-ndjson: { schema: { type: string } }
              responses:
                "202": { description: Accepted lines, and the errors of the others. }
                "413": { $ref: "#/components/responses/Problem" }
                "415": { $ref: "#/components/responses/Problem" }
                "422": { $ref: "#/components/responses/Problem" }
          /v1/campaigns/{id}:
            get:
              summary: Progress, spend, reserved and projected cost, budget and ETA.
              parameters: [{ $ref: "#/components/parameters/ID" }, { name: project, in: query, schema: { type: string } }]
              responses:
                "200": { description: The campaign., content: { application/json: { schema: { $ref: "#/components/schemas/Campaign" } } } }
                "404": { $ref: "#/components/responses/Problem" }
          /v1/dead-letters:
            get:
              summary: Dead-lettered jobs (and those needing reconciliation) of the project.
              parameters: [{ name: project, in: query, schema: { type: string } }]
              responses:
                "200": { description: The dead letters., content: { application/json: { schema: { $ref: "#/components/schemas/JobList" } } } }
          /v1/dead-letters/{id}/retry:
            post:
              summary: Put a dead letter back in the queue with fresh attempts.
              parameters: [{ $ref: "#/components/parameters/ID" }]
              responses:
                "200": { description: Queued again., content: { application/json: { schema: { $ref: "#/components/schemas/Job" } } } }
                "404": { $ref: "#/components/responses/Problem" }
                "409": { $ref: "#/components/responses/Problem" }
          /v1/dead-letters/{id}:
            delete:
              summary: Purge a dead letter (admin keys).
              parameters: [{ $ref: "#/components/parameters/ID" }]
              responses:
                "204": { description: Purged. }
                "403": { $ref: "#/components/responses/Problem" }
                "404": { $ref: "#/components/responses/Problem" }
          /v1/providers:
            get:
              summary: Each provider's health, circuit, window and slot use, cooldown, 429s, latency and prices.
              responses:
                "200": { description: The providers. }
          /v1/stats:
            get:
              summary: The project's jobs by state, its money, and the admission figures.
              parameters: [{ name: project, in: query, schema: { type: string } }]
              responses:
                "200": { description: The figures. }
          /v1/budgets:
            get:
              summary: The tenant's budgets with what is charged and reserved against each.
              responses:
                "200": { description: The budgets. }
            put:
              summary: Set or remove (limit null) a project's or campaign's budget (admin keys).
              requestBody:
                required: true
                content:
                  application/json:
                    schema:
                      type: object
                      additionalProperties: false
                      required: [scope, name, limit]
                      properties:
                        scope: { enum: [project, campaign] }
                        name: { type: string }
                        limit: { type: [string, "null"], examples: ["12.50"] }
              responses:
                "200": { description: The budgets after the change. }
                "403": { $ref: "#/components/responses/Problem" }
                "422": { $ref: "#/components/responses/Problem" }
          /v1/events:
            get:
              summary: Server-Sent Events of job status, results, quota and budget holds and budget alerts.
              description: |
                Each event has an id; reconnect with `Last-Event-ID` to resume after it without gaps (within the
                last 100,000 events of this server process; an `event: reset` says some were dropped).
              parameters:
                - { name: job, in: query, schema: { type: string } }
                - { name: campaign, in: query, schema: { type: string } }
                - { name: project, in: query, schema: { type: string } }
                - { name: Last-Event-ID, in: header, schema: { type: string } }
                - { name: last_event_id, in: query, schema: { type: string } }
              responses:
                "200": { description: An event stream., content: { text/event-stream: { schema: { type: string } } } }
          /v1/webhooks:
            post:
              summary: Register a webhook (admin keys); the answer carries its signing secret, once.
              description: |
                Deliveries are signed the Standard Webhooks way (webhook-id, webhook-timestamp,
                webhook-signature: v1, base64 HMAC-SHA256 of "id.timestamp.body" keyed by the secret's bytes), and
                retried on failure for more than 24 h (at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h).
                Loopback, private and link-local targets are refused unless the server allows them.
              parameters: [{ $ref: "#/components/parameters/IdempotencyKey" }]
              requestBody:
                required: true
                content:
                  application/json:
                    schema:
                      type: object
                      additionalProperties: false
                      required: [url]
                      properties:
                        url: { type: string, format: uri }
                        events:
                          type: array
                          items: { enum: [job.status, job.finished, quota.hold, budget.hold, budget.alert, "*"] }
              responses:
                "201": { description: Registered. }
                "403": { $ref: "#/components/responses/Problem" }
                "422": { $ref: "#/components/responses/Problem" }
            get:
              summary: The tenant's webhooks (admin keys), without their secrets.
              responses:
                "200": { description: The webhooks. }
          /v1/webhooks/{id}:
            delete:
              summary: Remove a webhook and its delivery log (admin keys).
              parameters: [{ $ref: "#/components/parameters/ID" }]
              responses:
                "204": { description: Removed. }
                "404": { $ref: "#/components/responses/Problem" }
          /v1/webhooks/{id}/deliveries:
            get:
              summary: A webhook's deliveries, newest first, with every try's status, error and time.
              parameters: [{ $ref: "#/components/parameters/ID" }]
              responses:
                "200": { description: The delivery log. }
                "404": { $ref: "#/components/responses/Problem" }
          /v1/webhooks/{id}/deliveries/{delivery}/redeliver:
            post:
              summary: Send a delivery again, now, with the same webhook-id.
              parameters:
                - { $ref: "#/components/parameters/ID" }
                - { name: delivery, in: path, required: true, schema: { type: string } }
              responses:
                "202": { description: Queued for sending. }
                "404": { $ref: "#/components/responses/Problem" }
        components:
          securitySchemes:
            bearer: { type: http, scheme: bearer }
          parameters:
            ID: { name: id, in: path, required: true, schema: { type: string } }
            IdempotencyKey:
              name: Idempotency-Key
              in: header
              schema: { type: string, maxLength: 255 }
              description: Same key and body replay the first answer; a different body is 422; a request still running is 409.
          responses:
            Problem:
              description: An RFC 9457 problem.
              content:
                application/problem+json: { schema: { $ref: "#/components/schemas/Problem" } }
          schemas:
            Problem:
              type: object
              properties:
                type: { type: string }
                title: { type: string }
                status: { type: integer }
                detail: { type: string }
                instance: { type: string }
                errors:
                  type: array
                  items:
                    type: object
                    properties: { field: { type: string }, message: { type: string }, line: { type: integer } }
            JobCreate:
              type: object
              additionalProperties: false
              required: [type, prompt]
              properties:
                type: { enum: [audio, video] }
                prompt: { type: string }
                id: { type: string }
                priority: { enum: [low, normal, high, urgent] }
                duration: { type: [string, number], description: "Seconds: 30, 2.5, \"30s\", \"1500ms\", \"2m\"." }
                format: { type: string }
                resolution: { type: string, examples: ["720p"] }
                voice: { type: string }
                model: { type: string }
                provider: { type: string }
                user: { type: string }
                project: { type: string }
                campaign: { type: string }
                idempotency_key: { type: string }
                metadata: { type: object, description: "At most 16 KiB as JSON." }
            Job:
              type: object
              properties:
                object: { const: job }
                id: { type: string }
                request_id: { type: string }
                state: { enum: [available, running, succeeded, dead_lettered, needs_reconciliation] }
                kind: { enum: [audio, video] }
                prompt: { type: string }
                project: { type: string }
                campaign: { type: string }
                user: { type: string }
                provider: { type: [string, "null"] }
                attempts: { type: integer }
                errors: { type: array, items: { type: object } }
                cost: { type: object }
                artifact:
                  type: [object, "null"]
                  description: >-
                    The media: its local url (/v1/jobs/{id}/artifact), content_type, format, bytes, sha256,
                    duration_seconds, provider, served_from_cache, deduplicated, public_url (the CDN URL when the
                    object store is configured) and saved (what a cache hit saved).
            JobList:
              type: object
              properties:
                object: { const: list }
                data: { type: array, items: { $ref: "#/components/schemas/Job" } }
                next_cursor: { type: [string, "null"] }
            JobOrList:
              oneOf:
                - $ref: "#/components/schemas/Job"
                - $ref: "#/components/schemas/JobList"
            Campaign:
              type: object
              properties:
                id: { type: string }
                jobs: { type: integer }
                counts: { type: object }
                progress: { type: number }
                spent: { type: string }
                saved: { type: string, description: What the jobs served by a cache (memory, Redis, the object store) or an identical request would have cost. }
                reused: { type: integer }
                reserved: { type: string }
                projected: { type: [string, "null"] }
                budget: { type: [string, "null"] }
                eta_seconds: { type: [number, "null"] }
        """#
}
