//! What the daemon reads about the host beside its own programs: the kernel's socket table
//! (sock_diag), the TcpExt counters (/proc/net/netstat) and the hardening sysctls (posture).

pub mod netstat;
pub mod posture;
pub mod sock_diag;
