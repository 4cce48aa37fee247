import CVhostLinux
import VhostSystem

/// A thread that spins on one CPU until stopped: in tests, the vCPU that shares a worker's core.
public final class CPUHog {
    private let stopFlag: UnsafeMutablePointer<UInt32>
    private let thread: PinnedThread
    private var stopped = false

    public init(cpu: Int) throws {
        let flag = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
        flag.initialize(to: 0)
        stopFlag = flag
        do {
            thread = try PinnedThread(name: "test-hog", cpu: cpu) {
                while cvh_load_acquire_u32(flag) == 0 {}
            }
        } catch {
            flag.deallocate()
            throw error
        }
    }

    /// Stops and joins the thread (again: nothing).
    public func stop() {
        guard !stopped else { return }
        stopped = true
        cvh_store_release_u32(stopFlag, 1)
        thread.join()
    }

    deinit {
        stop()
        stopFlag.deallocate()
    }
}
