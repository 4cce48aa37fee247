import Logging
import VhostSystem
import VhostUserProtocol

/// Accepts front-ends on a listening socket and serves one at a time. A connection that arrives while
/// another is active is closed at once (one front-end owns a device's rings); when the active one
/// disconnects, the next connection starts a fresh session.
public final class VhostUserServer<D: VhostUserDevice> {
    let listener: UnixSocket
    let device: D
    let logger: Logger
    let stopEvent: EventFD

    /// Once a message has started arriving, the rest must follow within this time (QEMU writes each
    /// message with one sendmsg); a front-end that stalls mid-message is dropped rather than allowed to
    /// block the control thread, and with it SIGTERM handling.
    static var messageTimeoutSeconds: Int { 5 }

    public init(listener: UnixSocket, device: D, logger: Logger) throws {
        self.listener = listener
        self.device = device
        self.logger = logger
        stopEvent = try EventFD()
    }

    /// Makes `run()` return after the current session drains. Safe from any thread.
    public func requestStop() { stopEvent.signal() }

    /// Serves until `requestStop()`.
    public func run() {
        while true {
            guard let ready = try? Poll.readable([listener.fd.rawValue, stopEvent.rawValue], timeoutMs: -1) else { continue }
            if ready.contains(1) { return }
            guard ready.contains(0) else { continue }
            let conn: UnixSocket
            do {
                conn = try listener.accept()
            } catch {
                logger.error("accept failed: \(error)")
                continue
            }
            logger.info("front-end connected")
            do {
                try conn.setTimeouts(seconds: Self.messageTimeoutSeconds)
            } catch {
                logger.error("dropping the front-end: \(error)")
                continue
            }
            if serve(conn) == .stopRequested { return }
        }
    }

    enum End { case disconnected, stopRequested }

    private func serve(_ conn: UnixSocket) -> End {
        let session = Session(device: device, channel: Channel(conn), logger: logger)
        defer {
            session.teardown()
            conn.fd.close()
            logger.info("session ended; waiting for the next front-end")
        }
        while true {
            guard let ready = try? Poll.readable([conn.fd.rawValue, listener.fd.rawValue, stopEvent.rawValue], timeoutMs: -1) else {
                continue
            }
            if ready.contains(2) { return .stopRequested }
            if ready.contains(1), let extra = try? listener.accept() {
                logger.warning("refusing a second front-end: this socket already serves one")
                extra.fd.close()
            }
            if ready.contains(0), session.handleNextMessage() == .closed { return .disconnected }
        }
    }
}
