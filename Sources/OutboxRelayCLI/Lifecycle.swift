import Foundation
import Logging
import OutboxCore
import OutboxRelay
import ServiceLifecycle

/// The relay as a service: graceful shutdown asks it to stop reading, wait
/// (bounded) for the sink to acknowledge what is in flight — the sink's flush —
/// and confirm what was acknowledged; `run` returns when that is done.
struct RelayRunner: Service {
    let relay: any RelayService
    let logger: Logger

    func run() async throws {
        try await withGracefulShutdownHandler {
            try await relay.runDetached()
        } onGracefulShutdown: {
            logger.notice("shutdown requested; stopping")
            relay.stop()
        }
    }
}

/// The health and metrics endpoints as a service. It is started first and
/// stopped last, so probes and scrapes are answered until the relay is done.
struct HTTPRunner: Service {
    let server: HTTPServer
    let logger: Logger

    func run() async throws {
        server.start()
        logger.info("serving /healthz, /readyz and /metrics", metadata: ["address": "\(server.address)"])
        try? await gracefulShutdown()
        server.stop()
    }
}

/// SIGTERM and SIGINT from the moment a relay command starts. The service
/// group handles them once the relay runs; before that — while the sink
/// connects, a Kafka producer initialises its transactions (up to 30 s against
/// an unreachable broker), the relay is built — the default action would end
/// the process by the signal. Nothing has been read from the slot then, so
/// there is nothing to deliver or confirm: the process logs it and exits 0 at
/// once (exit 0 is "stopped on request"). Once the relay exists a signal
/// stops it gracefully, also in the moment before the group's own handlers
/// are installed (afterwards both see it; stopping twice is harmless).
/// SIGPIPE is ignored. Keep the instance alive for the run.
final class StartupSignals: @unchecked Sendable {
    private let lock = NSLock()
    private var stop: (@Sendable () -> Void)?
    private var sources: [any DispatchSourceSignal] = []

    init(logger: Logger) {
        signal(SIGPIPE, SIG_IGN)
        for number in [SIGINT, SIGTERM] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [weak self] in
                guard let self else { return }
                let stop = self.lock.withLock { self.stop }
                if let stop {
                    stop()
                } else {
                    logger.notice(
                        "signal received while starting; exiting before reading anything",
                        metadata: ["signal": "\(number == SIGINT ? "SIGINT" : "SIGTERM")"])
                    _exit(0)
                }
            }
            source.resume()
            sources.append(source)
        }
    }

    /// From now on a signal calls `stop` (the relay's graceful stop).
    func forward(to stop: @escaping @Sendable () -> Void) {
        lock.withLock { self.stop = stop }
    }
}

/// Runs the relay (and the HTTP endpoints, if asked) in one service group:
/// SIGTERM/SIGINT stop the relay first, then the HTTP server. The group also
/// ends when the relay ends by itself (a fatal error, or --end-lsn reached).
/// `signals` (installed when the command started) stops the relay if a signal
/// came before the group took over.
func runServices(
    relay: any RelayService, metrics: MetricsExporter?, http: HTTPOptions.Address?, signals: StartupSignals,
    logger: Logger
) async throws {
    signals.forward(to: { relay.stop() })
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
    if let (host, port) = http {
        let server = try HTTPServer(host: host, port: port) { path in
            let stats = relay.currentStats
            switch path {
            case "/healthz":
                let alive = stats.state != .failed
                return .init(status: alive ? 200 : 503, body: alive ? "ok\n" : "failed\n")
            case "/readyz":
                let ready = stats.isReady(nowMilliseconds: Relay.nowMilliseconds())
                var reason = "state \(stats.state.rawValue)"
                if stats.state == .streaming && !ready {
                    reason = stats.sinkReachable ? "sink not acknowledging" : "sink unreachable"
                }
                return .init(status: ready ? 200 : 503, body: ready ? "ready\n" : "not ready: \(reason)\n")
            case "/metrics":
                let text = metrics.map { String(decoding: $0.render(stats), as: UTF8.self) } ?? ""
                return .init(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: text)
            default:
                return .init(status: 404, body: "not found; try /healthz, /readyz or /metrics\n")
            }
        }
        services.append(.init(service: HTTPRunner(server: server, logger: logger)))
    }
    services.append(
        .init(
            service: RelayRunner(relay: relay, logger: logger), successTerminationBehavior: .gracefullyShutdownGroup,
            failureTerminationBehavior: .gracefullyShutdownGroup))
    let group = ServiceGroup(
        configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    try await group.run()
}
