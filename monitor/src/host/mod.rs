//! What the daemon reads about the host beside its own programs: the kernel's socket table
//! (sock_diag), the TcpExt counters (/proc/net/netstat), the hardening sysctls (posture), the
//! network namespaces of the host and who they belong to (netns, runtime_names), and their
//! interfaces' addresses.

pub mod interface_addresses;
pub mod netlink;
pub mod netns;
pub mod netstat;
pub mod posture;
pub mod runtime_names;
pub mod sock_diag;
