//! Socket activation: listening sockets passed in by systemd (or anything speaking its
//! protocol: `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, the sockets from fd 3 on).
//!
//! With `hooks/certline.socket`, systemd owns the listening sockets and hands them to each
//! certline process it starts. While certline restarts, the sockets stay open: new
//! connections wait in the kernel's accept queue for the next process instead of being
//! refused.
//!
//! Which socket is which: a socket named `line` or `admin` (`FileDescriptorName=`, or
//! `systemd-socket-activate --fdname=line:admin`) takes that role; any other socket takes the
//! role whose configured port it is bound to (`listen` or `admin.listen`). A socket that
//! fits neither is an error, so a unit and a configuration that disagree are noticed at start.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};
use thiserror::Error;

/// The listening sockets the service manager passed, by role.
#[derive(Debug, Default)]
pub struct Activated {
    /// The line protocol's listener.
    pub line: Option<TcpListener>,
    /// The admin API's listener.
    pub admin: Option<TcpListener>,
}

/// The passed sockets could not be used.
#[derive(Debug, Error)]
pub enum ActivationError {
    #[error("reading the sockets systemd passed (LISTEN_FDS): {0}")]
    Environment(std::io::Error),
    #[error("fd {fd} passed by systemd ({name}) is not a TCP socket: {error}")]
    NotTcp {
        fd: RawFd,
        name: String,
        error: std::io::Error,
    },
    #[error(
        "the socket systemd passed on {addr} ({name}) is neither `listen` (port {line_port}) nor `admin.listen`{admin}: make the ports in certline.socket and certline.toml agree, or name the socket line or admin (FileDescriptorName=)"
    )]
    Unmatched {
        addr: SocketAddr,
        name: String,
        line_port: u16,
        admin: String,
    },
    #[error("systemd passed two sockets for the {role} listener ({first} and {second}); pass one")]
    Twice {
        role: &'static str,
        first: SocketAddr,
        second: SocketAddr,
    },
}

impl Activated {
    /// Takes the sockets passed to this process, if any (none when `LISTEN_PID` is not this
    /// process). `line_port` and `admin_port` are the configured ports, used to tell unnamed
    /// sockets apart.
    pub fn from_env(line_port: u16, admin_port: Option<u16>) -> Result<Self, ActivationError> {
        let fds = sd_notify::listen_fds_with_names().map_err(ActivationError::Environment)?;
        let mut activated = Self::default();
        for (fd, name) in fds {
            // SAFETY: the service manager passed this descriptor to this process (LISTEN_PID
            // is ours) and nothing else in certline uses descriptors from 3 on by number;
            // the iterator yields each one once, so it gets exactly one owner.
            let listener = unsafe { TcpListener::from_raw_fd(fd) };
            let addr = listener
                .local_addr()
                .map_err(|error| ActivationError::NotTcp {
                    fd,
                    name: name.clone(),
                    error,
                })?;
            let role = match name.as_str() {
                "line" => Role::Line,
                "admin" => Role::Admin,
                _ if addr.port() == line_port => Role::Line,
                _ if Some(addr.port()) == admin_port => Role::Admin,
                _ => {
                    return Err(ActivationError::Unmatched {
                        addr,
                        name,
                        line_port,
                        admin: admin_port.map_or_else(
                            || " (no [admin] section)".to_owned(),
                            |p| format!(" (port {p})"),
                        ),
                    });
                }
            };
            let (slot, role_name) = match role {
                Role::Line => (&mut activated.line, "line-protocol"),
                Role::Admin => (&mut activated.admin, "admin"),
            };
            if let Some(first) = slot.as_ref().and_then(|l| l.local_addr().ok()) {
                return Err(ActivationError::Twice {
                    role: role_name,
                    first,
                    second: addr,
                });
            }
            listener
                .set_nonblocking(true)
                .map_err(|error| ActivationError::NotTcp {
                    fd,
                    name: name.clone(),
                    error,
                })?;
            tracing::info!(%addr, fd, name = %name, role = role_name, "using the socket systemd passed");
            *slot = Some(listener);
        }
        Ok(activated)
    }
}

enum Role {
    Line,
    Admin,
}
