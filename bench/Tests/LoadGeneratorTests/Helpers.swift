#if canImport(Glibc)
import Glibc
#endif

func sysconfTicks() -> Int { sysconf(Int32(_SC_CLK_TCK)) }
