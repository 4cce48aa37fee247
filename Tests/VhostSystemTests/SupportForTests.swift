import Glibc
import VhostSystem

/// A private directory under /tmp for one test, removed with its entries when the test drops it, so
/// parallel tests never share a path and nothing is left behind.
final class ScratchDir {
    let path: String

    init() throws {
        var template = Array("/tmp/vhost-system-test-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { throw SystemError.current("mkdtemp") }
        path = String(cString: template)
    }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    deinit {
        if let dir = opendir(path) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name != "." && name != ".." { unlink("\(path)/\(name)") }
            }
            closedir(dir)
        }
        rmdir(path)
    }
}

/// A pipe-like pair whose "read" end sees EOF once every copy of the "write" end is closed. A
/// socketpair rather than pipe(2): it is created close-on-exec atomically, so a child spawned by a
/// concurrent test cannot inherit a write end and hide the EOF these tests look for.
func makePipe() throws -> (read: FileDescriptor, write: FileDescriptor) {
    let (r, w) = try UnixSocket.pair()
    return (r.fd, w.fd)
}

/// Reads once after waiting (bounded) for readability: the byte count, 0 at EOF, nil on timeout.
func readWithin(_ fd: Int32, timeoutMs: Int32 = 5_000) throws -> Int? {
    guard try !Poll.readable([fd], timeoutMs: timeoutMs).isEmpty else { return nil }
    var byte: UInt8 = 0
    return Glibc.read(fd, &byte, 1)
}

func lstatMode(_ path: String) -> mode_t? {
    var st = stat()
    return lstat(path, &st) == 0 ? st.st_mode : nil
}
