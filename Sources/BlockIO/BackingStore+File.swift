#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux
import VhostSystem

// Opening a file or block device: creation, O_DIRECT with a buffered fallback, geometry and
// capability probing.

extension BackingStore {
    static func openFile(_ path: String, _ options: BackingOptions, _ s: inout Setup) throws(BlockIOError) {
        var created = false
        var st = stat()
        // stat before open: opening a FIFO would block, and the type decides the error message.
        if stat(path, &st) != 0 {
            let error = errno
            guard error == ENOENT else { throw BlockIOError(SystemError("stat", errno: error), path: path) }
            guard let size = options.createSize else {
                throw BlockIOError("open", path: path, errno: ENOENT, reason: "does not exist (give a size to create it)")
            }
            guard !options.readOnly else {
                throw BlockIOError("open", path: path, errno: ENOENT, reason: "does not exist, and a read-only store is never created")
            }
            try createFile(path, size: size, preallocate: options.preallocate)
            created = true
        } else {
            try checkFileType(st.st_mode, path: path)
        }

        let baseFlags = options.readOnly ? O_RDONLY : O_RDWR
        let opened = try openWithDirectFallback(path, flags: baseFlags, preferDirect: options.preferDirectIO)
        let fd = opened.file
        s.directIO = opened.directIO
        if let warning = opened.warning { s.warnings.append(warning) }
        st = try withSystemErrors(path: path) { try fd.stat() }
        // Checked again on the open fd: the path may have been replaced since the stat above.
        try checkFileType(st.st_mode, path: path)
        s.file = fd
        s.isBlockDevice = (st.st_mode & S_IFMT) == S_IFBLK

        let geometry = try probeGeometry(fd.rawValue, st, path: path, isBlockDevice: s.isBlockDevice)
        var deviceBlock = geometry.logicalBlock
        if s.directIO {
            let alignment = directAlignment(fd.rawValue, st, deviceBlock: deviceBlock)
            s.directMemoryAlignment = alignment.memory
            s.directOffsetAlignment = alignment.offset
            if !s.isBlockDevice && alignment.offset > deviceBlock {
                // A file's "device" block is what O_DIRECT needs of offsets (e.g. on a 4Kn disk),
                // capped at the largest block a guest accepts; beyond that the bounce path copes.
                deviceBlock = min(alignment.offset, BackingOptions.blockSizeRange.upperBound)
                if options.blockSize == nil {
                    s.warnings.append("direct I/O on this filesystem needs \(alignment.offset)-byte alignment: "
                        + "logical block size \(deviceBlock)")
                }
            }
        }
        let block = options.blockSize ?? deviceBlock
        guard block >= deviceBlock else {
            throw .invalid("--block-size", path: path,
                           "\(block) is smaller than the device's logical block size \(deviceBlock)")
        }
        s.logicalBlockSize = block
        s.physicalBlockSize = max(block, geometry.physicalBlock)
        try setCapacity(geometry.size, &s)
        if let requested = options.createSize, !created, requested != geometry.size {
            s.warnings.append("\(path) already exists with \(geometry.size) bytes; the requested size "
                + "\(requested) is ignored (an existing store is never resized)")
        }

        s.supportsWriteZeroes = !options.readOnly
        let device = s.isBlockDevice ? UInt64(st.st_rdev) : UInt64(st.st_dev)
        let major = cvh_dev_major(device), minor = cvh_dev_minor(device)
        if !options.readOnly {
            s.supportsDiscard = s.isBlockDevice
                ? DeviceProbe.discardSupported(major: major, minor: minor)
                : probePunchHole(fd.rawValue, fileSize: geometry.size)
        }
        s.numaNode = DeviceProbe.numaNode(major: major, minor: minor)
    }

    static func checkFileType(_ mode: mode_t, path: String) throws(BlockIOError) {
        switch mode & S_IFMT {
        case S_IFREG, S_IFBLK: return
        case S_IFDIR: throw BlockIOError("open", path: path, errno: EISDIR, reason: "is a directory")
        default: throw .invalid("open", path: path, "is neither a regular file nor a block device")
        }
    }

    /// Creates a missing file of `size` bytes, mode 0600 (it holds a guest's disk). Sparse by default;
    /// with `preallocate`, every block is allocated up front (fallocate mode 0, or glibc's
    /// posix_fallocate, which writes a byte per block, where the filesystem lacks fallocate). A file
    /// that cannot be sized is removed again rather than left half made.
    static func createFile(_ path: String, size: UInt64, preallocate: Bool) throws(BlockIOError) {
        guard size > 0, size <= UInt64(Int64.max) else {
            throw .invalid("create", path: path, "size \(size) is out of range")
        }
        let fd = try withSystemErrors(path: path) {
            try FileDescriptor.open(path, flags: O_RDWR | O_CREAT | O_EXCL, mode: 0o600)
        }
        var failure: BlockIOError?
        if preallocate {
            var r = cvh_fallocate(fd.rawValue, 0, 0, size)
            if r == -EOPNOTSUPP {
                r = -posix_fallocate(fd.rawValue, 0, off_t(size))
            }
            if r != 0 {
                failure = BlockIOError(SystemError("fallocate", errno: -r, context: "\(size) bytes"), path: path)
            }
        } else if ftruncate(fd.rawValue, off_t(size)) != 0 {
            failure = BlockIOError(SystemError.current("ftruncate", context: "\(size) bytes"), path: path)
        }
        if let failure {
            fd.close()
            unlink(path)
            throw failure
        }
    }

    /// O_DIRECT (a _GNU_SOURCE flag Swift's Glibc module lacks), for tests that play with it.
    static let directFlag: Int32 = CVH_O_DIRECT

    typealias Opener = (_ path: String, _ flags: Int32) throws -> FileDescriptor

    /// Opens with O_DIRECT when `preferDirect`; a filesystem that refuses it (EINVAL: tmpfs before
    /// Linux 6.6, ramfs, some FUSE and network filesystems) gets a buffered open and a warning.
    /// `opener` is replaceable so tests can play such a filesystem.
    static func openWithDirectFallback(
        _ path: String, flags: Int32, preferDirect: Bool,
        opener: Opener = { try FileDescriptor.open($0, flags: $1) }
    ) throws(BlockIOError) -> (file: FileDescriptor, directIO: Bool, warning: String?) {
        if preferDirect {
            do {
                return (try opener(path, flags | CVH_O_DIRECT), true, nil)
            } catch let error as SystemError where error.errno == EINVAL {
                // Fall through to the buffered open.
            } catch let error as SystemError {
                throw BlockIOError(error, path: path)
            } catch {
                throw BlockIOError("open", path: path, errno: EIO, reason: "\(error)")
            }
        }
        let file = try withSystemErrors(path: path) { try opener(path, flags) }
        let warning = preferDirect
            ? "O_DIRECT refused by \(DeviceProbe.filesystemName(fd: file.rawValue)): using buffered I/O"
            : nil
        return (file, false, warning)
    }

    struct Geometry {
        var size: UInt64
        var logicalBlock: UInt32
        var physicalBlock: UInt32
    }

    /// Size and block sizes: the block-device ioctls, or st_size with 512-byte blocks for a file.
    static func probeGeometry(_ fd: Int32, _ st: stat, path: String, isBlockDevice: Bool) throws(BlockIOError) -> Geometry {
        if isBlockDevice {
            var size: UInt64 = 0
            var logical: Int32 = 0
            var physical: UInt32 = 0
            var r = cvh_blk_getsize64(fd, &size)
            if r == 0 { r = cvh_blk_sszget(fd, &logical) }
            if r == 0 { r = cvh_blk_pbszget(fd, &physical) }
            guard r == 0 else { throw BlockIOError(SystemError("block device ioctl", errno: -r), path: path) }
            guard logical > 0, logical & (logical - 1) == 0 else {
                throw .invalid("open", path: path, "the device reports a logical block size of \(logical)")
            }
            return Geometry(size: size, logicalBlock: UInt32(logical), physicalBlock: physical)
        }
        // A file's physical block: the filesystem's preferred I/O size (st_blksize), as a power of
        // two of at most 4 KiB, the page size: larger "preferred" sizes (network filesystems report
        // MiBs) describe transfer sizes, not a read-modify-write unit worth telling the guest about.
        var preferred: UInt32 = 512
        while preferred < 4096 && Int(preferred) * 2 <= Int(st.st_blksize) { preferred *= 2 }
        return Geometry(size: UInt64(max(st.st_size, 0)), logicalBlock: 512, physicalBlock: preferred)
    }

    /// What O_DIRECT needs: statx(STATX_DIOALIGN) where the kernel reports it (Linux 6.1 for files,
    /// 6.11 for block devices); otherwise the logical block size of the disk (sysfs), which is what
    /// older kernels required of both addresses and offsets.
    static func directAlignment(_ fd: Int32, _ st: stat, deviceBlock: UInt32) -> (memory: UInt32, offset: UInt32) {
        var memory: UInt32 = 0
        var offset: UInt32 = 0
        if cvh_dio_alignment(fd, &memory, &offset) == 0, offset > 0 {
            return (max(memory, 1), offset)
        }
        var block = deviceBlock
        let isBlockDevice = (st.st_mode & S_IFMT) == S_IFBLK
        if !isBlockDevice {
            let device = UInt64(st.st_dev)
            if let dir = DeviceProbe.diskDirectory(major: cvh_dev_major(device), minor: cvh_dev_minor(device)),
               let disk = DeviceProbe.readInteger(dir + "/queue/logical_block_size"), disk > 0, disk <= 65536 {
                block = max(block, UInt32(disk))
            }
        }
        return (block, block)
    }

    /// Whether fallocate(PUNCH_HOLE) works on this file, without touching its data: the probe punches
    /// a 4 KiB range past the end of the file (KEEP_SIZE), where there is nothing to lose. Filesystems
    /// check the mode before the range, so an unsupported punch fails with EOPNOTSUPP here too.
    static func probePunchHole(_ fd: Int32, fileSize: UInt64) -> Bool {
        // 4 KiB: the largest common filesystem block, so the probe starts past the file's last block.
        let probeLength: UInt64 = 4096
        let start = (fileSize + probeLength - 1) & ~(probeLength - 1)
        return cvh_fallocate(fd, CVH_FALLOC_FL_PUNCH_HOLE | CVH_FALLOC_FL_KEEP_SIZE, start, probeLength) == 0
    }
}
