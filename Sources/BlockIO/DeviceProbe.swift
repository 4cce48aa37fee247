#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux

// Best-effort facts about the device under a backing store, read from sysfs and statfs. Every probe
// returns nil or false when it cannot tell: none of them may fail an open.

enum DeviceProbe {
    /// The sysfs directory of the whole disk for device number `major:minor`. A partition's directory
    /// sits inside its disk's, and only the disk has the `queue/` and `device` entries we read.
    static func diskDirectory(major: UInt32, minor: UInt32) -> String? {
        guard let dir = realPath("/sys/dev/block/\(major):\(minor)") else { return nil }
        return exists(dir + "/partition") ? parent(of: dir) : dir
    }

    /// Whether the block device accepts BLKDISCARD: the kernel reports 0 bytes when it does not.
    static func discardSupported(major: UInt32, minor: UInt32) -> Bool {
        guard let dir = diskDirectory(major: major, minor: minor),
              let maxBytes = readInteger(dir + "/queue/discard_max_bytes") else { return false }
        return maxBytes > 0
    }

    /// The NUMA node of the hardware behind `major:minor`: the first `numa_node` found walking up from
    /// the disk's `device` (for virtio the PCI function is the parent of the virtio device). Stacked
    /// devices (device-mapper, md) have no `device`; their first lower device (`slaves/`) stands in.
    /// nil when unknown, including the kernel's -1 ("no affinity", e.g. a non-NUMA machine).
    static func numaNode(major: UInt32, minor: UInt32) -> Int? {
        guard let dir = diskDirectory(major: major, minor: minor) else { return nil }
        return numaNode(diskDirectory: dir, depth: 0)
    }

    private static func numaNode(diskDirectory dir: String, depth: Int) -> Int? {
        if var path = realPath(dir + "/device") {
            while path.hasPrefix("/sys/devices/") {
                if let node = readInteger(path + "/numa_node") { return node >= 0 ? Int(node) : nil }
                path = parent(of: path)
            }
            return nil
        }
        // 4 levels of stacking (e.g. dm-crypt on LVM on md on a partition) is more than real setups
        // use; the bound only guards against a loop in a strange sysfs.
        guard depth < 4, let lower = firstEntry(of: dir + "/slaves"),
              let lowerDir = realPath(dir + "/slaves/" + lower) else { return nil }
        let disk = exists(lowerDir + "/partition") ? parent(of: lowerDir) : lowerDir
        return numaNode(diskDirectory: disk, depth: depth + 1)
    }

    /// A name for the filesystem holding `fd`, for warnings ("O_DIRECT refused by tmpfs").
    static func filesystemName(fd: Int32) -> String {
        let magic = cvh_fs_magic(fd)
        guard magic >= 0 else { return "this filesystem" }
        // Magic numbers from <linux/magic.h>.
        switch magic {
        case 0x0102_1994: return "tmpfs"
        case 0x8584_58F6: return "ramfs"
        case 0x794C_7630: return "overlayfs"
        case 0xEF53: return "ext4"
        case 0x5846_5342: return "xfs"
        case 0x9123_683E: return "btrfs"
        case 0x6969: return "nfs"
        case 0x6573_5546: return "a FUSE filesystem"
        case 0x2FC1_2FC1: return "zfs"
        case 0x0102_1997: return "9p"
        default: return "filesystem 0x" + String(magic, radix: 16)
        }
    }

    // MARK: small file helpers (sysfs files are short text)

    static func readInteger(_ path: String) -> Int64? {
        readTrimmed(path).flatMap { Int64($0) }
    }

    /// A small file's text without the whitespace around it (sysfs and /proc/sys end in a newline).
    static func readTrimmed(_ path: String) -> String? {
        guard let text = readSmallFile(path) else { return nil }
        var trimmed = Substring(text)
        while let c = trimmed.first, c.isWhitespace { trimmed = trimmed.dropFirst() }
        while let c = trimmed.last, c.isWhitespace { trimmed = trimmed.dropLast() }
        return String(trimmed)
    }

    static func readSmallFile(_ path: String) -> String? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { _ = Glibc.close(fd) }
        // 256 bytes: sysfs attributes we read are single integers.
        var buffer = [UInt8](repeating: 0, count: 256)
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = Glibc.realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
        return String(path[..<slash])
    }

    private static func firstEntry(of directory: String) -> String? {
        guard let dir = opendir(directory) else { return nil }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { return name }
        }
        return nil
    }
}
