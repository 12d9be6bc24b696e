import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The health probes and `/metrics`, on swift-nio's HTTP/1.1 server pipeline.
///
/// An event loop serves every connection at once, so one slow or idle client
/// never delays another's probe. Each connection is bounded: a request must
/// arrive complete within `requestTimeout` of the connection (or of the last
/// response, for keep-alive), else the connection is closed — a slow-loris
/// client and an idle one alike; at most `maxConnections` are open (more are
/// closed at once); a header block over NIO's limit ends the connection.
/// `stop()` closes everything without waiting for any client.
final class HTTPServer: @unchecked Sendable {
    // @unchecked Sendable: immutable after init except `channel`, which is behind a Mutex.
    struct Response: Sendable {
        var status: Int
        var contentType = "text/plain; charset=utf-8"
        var body: String
    }

    let address: String
    let port: Int
    static let maxConnections = 64
    static let requestTimeout = TimeAmount.seconds(5)

    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    /// Open connections, shared with the child channels' initializers.
    private let connections = ConnectionCount()

    /// Binds `host:port` (port 0 picks a free one; `port` says which). Serving starts at once.
    init(host: String, port: Int, handler: @escaping @Sendable (_ path: String) -> Response) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let connections = self.connections
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 128)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                // Over the bound: refuse by closing, before any byte is read.
                let admitted = connections.count.withLock { count -> Bool in
                    guard count < Self.maxConnections else { return false }
                    count += 1
                    return true
                }
                guard admitted else { return channel.close() }
                channel.closeFuture.whenComplete { _ in connections.count.withLock { $0 -= 1 } }
                return channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
                    channel.pipeline.addHandler(ProbeHandler(handler: handler))
                }
            }
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw ServerError("cannot listen on --http-address \(host):\(port): \(error)")
        }
        self.group = group
        self.port = channel.localAddress?.port ?? port
        self.address = host.contains(":") ? "[\(host)]:\(self.port)" : "\(host):\(self.port)"
    }

    /// Kept for the service's shape: the server serves from `init` on.
    func start() {}

    /// Closes the listener and every connection; never waits for a client.
    func stop() {
        channel.close(promise: nil)
        group.shutdownGracefully { _ in }
    }
}

/// Open connections, shared by reference with the child channels' initializers.
private final class ConnectionCount: Sendable {
    let count = Mutex(0)
}

struct ServerError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// One connection: answers GET and HEAD with the handler's response; closes a
/// connection that has not sent a complete request within the request timeout.
private final class ProbeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let handler: @Sendable (String) -> HTTPServer.Response
    private var request: HTTPRequestHead?
    private var deadline: Scheduled<Void>?

    init(handler: @escaping @Sendable (String) -> HTTPServer.Response) { self.handler = handler }

    func channelActive(context: ChannelHandlerContext) {
        armDeadline(context)
        context.fireChannelActive()
    }

    /// A request must be complete within the request timeout (a slow-loris client is cut off).
    private func armDeadline(_ context: ChannelHandlerContext) {
        deadline?.cancel()
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: HTTPServer.requestTimeout) { channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): request = head
        case .body: break  // probes have no body; ignored (NIO bounds the header block)
        case .end:
            guard let head = request else { return }
            request = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let response: HTTPServer.Response
        switch head.method {
        case .GET, .HEAD:
            let path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "")
            response = handler(path)
        default:
            response = .init(status: 405, body: "only GET and HEAD\n")
        }
        let body = ByteBuffer(string: response.body)
        var headers = HTTPHeaders([
            ("Content-Type", response.contentType), ("Content-Length", "\(body.readableBytes)"),
        ])
        if response.status == 405 { headers.add(name: "Allow", value: "GET, HEAD") }
        let keepAlive = head.isKeepAlive
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let status = HTTPResponseStatus(statusCode: response.status)
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
            promise: nil)
        if head.method != .HEAD { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
        if keepAlive { armDeadline(context) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
