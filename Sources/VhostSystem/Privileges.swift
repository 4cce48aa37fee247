#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux

/// A user or group name that could not be turned into an id.
public struct IdentityLookupError: Error, CustomStringConvertible, Equatable, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Who the daemon becomes after start-up (`--user USER[:GROUP]`): the ids and the complete
/// supplementary group list, all resolved before anything is opened, so the drop itself is only
/// system calls and cannot fail half-way on a missing /etc/group entry.
public struct Credentials: Sendable, Equatable, CustomStringConvertible {
    public var uid: uid_t
    public var gid: gid_t
    /// Supplementary groups after the drop: the user's groups from the group database when the user
    /// has a name, otherwise none (a bare UID:GID keeps no group root had).
    public var groups: [gid_t]
    public var name: String?

    public init(uid: uid_t, gid: gid_t, groups: [gid_t], name: String?) {
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.name = name
    }

    public var description: String {
        "uid \(uid)\(name.map { " (\($0))" } ?? ""), gid \(gid), groups \(groups)"
    }
}

public enum Privileges {
    /// A user name or a numeric uid. A number need not exist in the password database (containers,
    /// sssd-less hosts): ownership by a bare uid is meaningful to the kernel.
    public static func userID(_ text: String) throws(IdentityLookupError) -> uid_t {
        if let n = numericID(text) { return n }
        guard let entry = try passwd(named: text) else { throw IdentityLookupError("no such user: \(text)") }
        return entry.uid
    }

    /// A group name or a numeric gid.
    public static func groupID(_ text: String) throws(IdentityLookupError) -> gid_t {
        if let n = numericID(text) { return n }
        guard let gid = try group(named: text) else { throw IdentityLookupError("no such group: \(text)") }
        return gid
    }

    /// `USER`, `USER:GROUP`, `UID` or `UID:GID`. Without a group, the user's primary group from the
    /// password database; a uid with no password entry therefore needs an explicit group.
    public static func credentials(_ spec: String) throws(IdentityLookupError) -> Credentials {
        let parts = spec.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard let userText = parts.first, !userText.isEmpty else { throw IdentityLookupError("empty user in \(spec)") }
        if parts.count == 2 && parts[1].isEmpty { throw IdentityLookupError("empty group in \(spec)") }
        // The password entry gives the name (for the supplementary groups) and the primary group.
        let entry: (uid: uid_t, gid: gid_t, name: String)?
        if let n = numericID(userText) {
            entry = try passwd(uid: n)
        } else {
            guard let e = try passwd(named: userText) else { throw IdentityLookupError("no such user: \(userText)") }
            entry = e
        }
        let uid = numericID(userText) ?? entry!.uid
        let gid: gid_t
        if parts.count == 2 {
            gid = try groupID(parts[1])
        } else if let e = entry {
            gid = e.gid
        } else {
            throw IdentityLookupError("uid \(uid) has no password entry, so no primary group: give UID:GID")
        }
        let groups = try entry.map { e throws(IdentityLookupError) in try groupList(user: e.name, primary: gid) } ?? []
        return Credentials(uid: uid, gid: gid, groups: groups, name: entry?.name)
    }

    /// Becomes `target` for good: supplementary groups, then the gid, then the uid. The order matters:
    /// once the uid is no longer 0 the process has lost CAP_SETGID and could not shed root's groups.
    /// setgid/setuid set the real, effective and saved ids together (we are root when calling), and
    /// glibc applies them to every thread of the process (its setxid signal broadcast), but callers
    /// should drop before starting threads anyway so no thread ever runs privileged code
    /// concurrently with the drop. Verifies afterwards that all three ids changed and that root
    /// cannot be regained; a failure here leaves the process in an unknown state, so the caller must
    /// not continue serving.
    public static func drop(to target: Credentials) throws(SystemError) {
        let r = target.groups.withUnsafeBufferPointer { setgroups($0.count, $0.baseAddress) }
        if r != 0 { throw .current("setgroups", context: "\(target.groups)") }
        if setgid(target.gid) != 0 { throw .current("setgid", context: "\(target.gid)") }
        if setuid(target.uid) != 0 { throw .current("setuid", context: "\(target.uid)") }

        var ru: uid_t = 0, eu: uid_t = 0, su: uid_t = 0
        var rg: gid_t = 0, eg: gid_t = 0, sg: gid_t = 0
        var e = cvh_getresuid(&ru, &eu, &su)
        if e < 0 { throw SystemError("getresuid", errno: -e) }
        e = cvh_getresgid(&rg, &eg, &sg)
        if e < 0 { throw SystemError("getresgid", errno: -e) }
        guard ru == target.uid, eu == target.uid, su == target.uid, rg == target.gid, eg == target.gid, sg == target.gid else {
            throw SystemError("setuid", errno: EPERM,
                              context: "ids after the drop are uid \(ru)/\(eu)/\(su) gid \(rg)/\(eg)/\(sg), expected \(target)")
        }
        if target.uid != 0 {
            // If either succeeds the drop did not stick (e.g. a saved set-user-ID of 0 was kept).
            if setuid(0) == 0 { throw SystemError("setuid", errno: EPERM, context: "setuid(0) succeeded after dropping to \(target)") }
            if target.gid != 0 && setgid(0) == 0 {
                throw SystemError("setgid", errno: EPERM, context: "setgid(0) succeeded after dropping to \(target)")
            }
        }
    }

    /// The effective uid (e.g. to report who the daemon runs as).
    public static var effectiveUserID: uid_t { geteuid() }

    // MARK: - database lookups

    /// Digits only: "+5" or " 5" are names (and will not be found), never a number.
    private static func numericID(_ text: String) -> UInt32? {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        // (uid_t)-1 means "unchanged" to chown and setreuid; it is never a real id.
        guard let n = UInt32(text), n != UInt32.max else { return nil }
        return n
    }

    /// Calls a getXXnam_r-style function with a growing buffer until it stops reporting ERANGE.
    /// Returns whether an entry was found; an error other than "not found" is thrown.
    private static func withLookupBuffer(_ what: String, _ call: (UnsafeMutablePointer<CChar>, Int) -> (rc: Int32, found: Bool))
        throws(IdentityLookupError) -> Bool
    {
        var size = 1024
        while true {
            let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: size)
            defer { buffer.deallocate() }
            let (rc, found) = call(buffer, size)
            if rc == ERANGE && size < 1 << 20 {
                size *= 2
                continue
            }
            // POSIX: 0 with a nil result is "not found"; ENOENT/ESRCH/EBADF/EPERM are returned by some
            // NSS modules for the same thing.
            if rc == 0 || rc == ENOENT || rc == ESRCH || rc == EBADF || rc == EPERM { return found }
            throw IdentityLookupError("looking up \(what): \(String(cString: strerror(rc)))")
        }
    }

    private static func passwd(named name: String) throws(IdentityLookupError) -> (uid: uid_t, gid: gid_t, name: String)? {
        var pw = Glibc.passwd()
        var result: (uid: uid_t, gid: gid_t, name: String)?
        let found = try withLookupBuffer("user \(name)") { buf, size in
            var out: UnsafeMutablePointer<Glibc.passwd>?
            let rc = getpwnam_r(name, &pw, buf, size, &out)
            if rc == 0, let p = out { result = (p.pointee.pw_uid, p.pointee.pw_gid, String(cString: p.pointee.pw_name)) }
            return (rc, out != nil)
        }
        return found ? result : nil
    }

    private static func passwd(uid: uid_t) throws(IdentityLookupError) -> (uid: uid_t, gid: gid_t, name: String)? {
        var pw = Glibc.passwd()
        var result: (uid: uid_t, gid: gid_t, name: String)?
        let found = try withLookupBuffer("uid \(uid)") { buf, size in
            var out: UnsafeMutablePointer<Glibc.passwd>?
            let rc = getpwuid_r(uid, &pw, buf, size, &out)
            if rc == 0, let p = out { result = (p.pointee.pw_uid, p.pointee.pw_gid, String(cString: p.pointee.pw_name)) }
            return (rc, out != nil)
        }
        return found ? result : nil
    }

    private static func group(named name: String) throws(IdentityLookupError) -> gid_t? {
        var gr = Glibc.group()
        var gid: gid_t?
        let found = try withLookupBuffer("group \(name)") { buf, size in
            var out: UnsafeMutablePointer<Glibc.group>?
            let rc = getgrnam_r(name, &gr, buf, size, &out)
            if rc == 0, let g = out { gid = g.pointee.gr_gid }
            return (rc, out != nil)
        }
        return found ? gid : nil
    }

    /// What initgroups(user, primary) would install, computed now rather than at drop time.
    private static func groupList(user: String, primary: gid_t) throws(IdentityLookupError) -> [gid_t] {
        var count: Int32 = 16
        while true {
            var groups = [gid_t](repeating: 0, count: Int(count))
            var n = count
            let r = groups.withUnsafeMutableBufferPointer { getgrouplist(user, primary, $0.baseAddress, &n) }
            if r >= 0 { return Array(groups.prefix(Int(n))) }
            // -1: the list did not fit; n now holds the size needed.
            guard n > count, n <= 65536 else { throw IdentityLookupError("cannot list the groups of \(user)") }
            count = n
        }
    }
}
