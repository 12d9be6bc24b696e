import Glibc
import OutboxCore

/// Writes one JSON line per event to a file descriptor: stdout (`--sink stdout`)
/// or a file opened for append (`--sink file:PATH`).
///
/// Lines are buffered and written in batches: `poll` writes the batch and, for
/// a file, `fsync`s it before acknowledging, so an acknowledged event survives
/// a crash of the relay or the machine (the durable sink of the crash tests).
/// For stdout an event is acknowledged once `write(2)` returned.
public final class NDJSONSink: EventSink {
    public let name: String
    private let fd: Int32
    private let ownsDescriptor: Bool
    private let durable: Bool
    private var buffer: [UInt8] = []
    private var pending: [Acknowledgement] = []
    /// Write the batch when it grows past this many bytes, even mid-poll.
    private let batchBytes = 1 << 20

    /// The process's standard output.
    public static func stdout() -> NDJSONSink {
        NDJSONSink(name: "stdout", fd: STDOUT_FILENO, owns: false, durable: false)
    }

    /// A file opened for appending (created 0644 if missing); acks after fsync.
    ///
    /// A relay killed in the middle of a `write` can leave a torn last line.
    /// That event was never acknowledged, so the next run delivers it again;
    /// the torn tail is cut off first (`repairedBytes` says how much), so that
    /// every line of the file stays one complete JSON object.
    public static func file(path: String) throws -> NDJSONSink {
        let fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw SinkError("cannot open sink file \(path): \(String(cString: strerror(errno)))")
        }
        let sink = NDJSONSink(name: "file:\(path)", fd: fd, owns: true, durable: true)
        sink.repairedBytes = try cutTornLine(fd, path: path)
        return sink
    }

    /// Bytes of a torn last line removed when the file was opened.
    public private(set) var repairedBytes = 0

    /// Truncates a regular file after its last newline; returns the bytes removed.
    static func cutTornLine(_ fd: Int32, path: String) throws -> Int {
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, info.st_size > 0 else { return 0 }
        let size = Int(info.st_size)
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        var end = size
        while end > 0 {
            let start = max(0, end - chunk.count)
            let count = end - start
            let read = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(start)) }
            guard read == count else {
                throw SinkError("cannot read sink file \(path): \(String(cString: strerror(errno)))")
            }
            if let newline = chunk[0..<count].lastIndex(of: 10) {
                let keep = start + newline + 1
                if keep == size { return 0 }
                guard ftruncate(fd, off_t(keep)) == 0 else {
                    throw SinkError("cannot repair sink file \(path): \(String(cString: strerror(errno)))")
                }
                return size - keep
            }
            end = start
        }
        guard ftruncate(fd, 0) == 0 else {
            throw SinkError("cannot repair sink file \(path): \(String(cString: strerror(errno)))")
        }
        return size
    }

    private init(name: String, fd: Int32, owns: Bool, durable: Bool) {
        self.name = name
        self.fd = fd
        self.ownsDescriptor = owns
        self.durable = durable
        buffer.reserveCapacity(batchBytes + 4096)
    }

    deinit { if ownsDescriptor { close(fd) } }

    public func send(_ event: OutboxEvent, ticket: UInt64) throws {
        event.appendJSONLine(to: &buffer)
        pending.append(Acknowledgement(ticket: ticket, weight: event.weight))
        if buffer.count >= batchBytes { try writeBuffer() }
    }

    public func poll(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        guard !pending.isEmpty else { return [] }
        try writeBuffer()
        if durable {
            guard fsync(fd) == 0 else {
                throw SinkError("fsync of \(name) failed: \(String(cString: strerror(errno)))")
            }
        }
        defer { pending.removeAll(keepingCapacity: true) }
        return pending
    }

    public func flush(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try poll(timeoutMilliseconds: timeoutMilliseconds)
    }

    /// Drops the lines not yet written (a stale session's); events already
    /// written stay unacknowledged and are delivered again by the next session.
    public func discardUnacknowledged() -> Int {
        defer {
            buffer.removeAll(keepingCapacity: true)
            pending.removeAll(keepingCapacity: true)
        }
        return pending.count
    }

    private func writeBuffer() throws {
        var offset = 0
        while offset < buffer.count {
            let written = buffer.withUnsafeBytes {
                write(fd, $0.baseAddress! + offset, $0.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw SinkError("write to \(name) failed: \(String(cString: strerror(errno)))")
            }
            offset += written
        }
        buffer.removeAll(keepingCapacity: true)
    }
}
