//! Where the relay's listening sockets come from: from systemd when it
//! started the relay through socket activation (`LISTEN_PID`, `LISTEN_FDS`,
//! `LISTEN_FDNAMES`), bound as configured otherwise.
//!
//! Under socket activation each socket is found by its name
//! (`FileDescriptorName=` in the `.socket` unit): `ingress` is the
//! providers' HTTPS listener; `admin` is kept for the admin listener
//! (`[admin] listen`, to come): [`Listeners::admin`] is where it goes. A
//! single socket with a name of systemd's choosing (none was set) is taken
//! as the ingress. The configured `server.listen` is then not bound, so the
//! service needs no capability to serve port 443.
//!
//! Sockets are taken before the async runtime starts: reading and clearing
//! the environment is only sound while the process has one thread.
//!
//! [`slots`]: the connection slots both listeners (ingress and admin)
//! serve their connections in: a bound, idle timeouts, room made by
//! closing the connection idle longest.

pub mod slots;

use std::net::{SocketAddr, TcpListener};

/// The name of the providers' listener in `LISTEN_FDNAMES`.
pub const INGRESS: &str = "ingress";
/// The name kept for the admin listener.
pub const ADMIN: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The cause is the source (printed after this, once).
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("socket activation: {0}")]
    Activation(String),
    #[error("socket activation: the socket named {name:?} is not a listening TCP socket")]
    NotTcp {
        name: String,
        source: std::io::Error,
    },
}

/// The relay's listening sockets, not yet registered with the runtime.
#[derive(Debug)]
pub struct Listeners {
    pub ingress: TcpListener,
    /// Passed by systemd under the name `admin`; nothing uses it yet.
    pub admin: Option<TcpListener>,
    /// Whether they came from systemd (else bound from the config).
    pub activated: bool,
}

impl Listeners {
    /// The sockets systemd passed to this process, or, when it passed none,
    /// `listen` bound now.
    pub fn acquire(listen: SocketAddr) -> Result<Listeners, ListenError> {
        match Activation::from_env()? {
            Some(activation) => activation.into_listeners(),
            None => Listeners::bind(listen),
        }
    }

    /// Binds `listen` (port 0 picks a free port).
    pub fn bind(listen: SocketAddr) -> Result<Listeners, ListenError> {
        let bind_error = |source| ListenError::Bind {
            addr: listen,
            source,
        };
        let ingress = TcpListener::bind(listen).map_err(bind_error)?;
        ingress.set_nonblocking(true).map_err(bind_error)?;
        Ok(Listeners {
            ingress,
            admin: None,
            activated: false,
        })
    }

    /// The addresses the relay will answer on.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        [Some(&self.ingress), self.admin.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

/// What systemd's environment says was passed.
struct Activation {
    names: Vec<String>,
    fds: listenfd::ListenFd,
}

impl Activation {
    /// `None` when no socket was passed to this process: no `LISTEN_FDS`,
    /// or a `LISTEN_PID` that is another process's (the variables were
    /// inherited from a parent), or none at all.
    fn from_env() -> Result<Option<Activation>, ListenError> {
        let var = |name| std::env::var(name).ok();
        let (Some(pid), Some(count)) = (var("LISTEN_PID"), var("LISTEN_FDS")) else {
            return Ok(None);
        };
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(None);
        }
        let count: usize = count.trim().parse().map_err(|_| {
            ListenError::Activation(format!("LISTEN_FDS={count:?} is not a number"))
        })?;
        let names = match var("LISTEN_FDNAMES") {
            Some(names) => names.split(':').map(str::to_owned).collect(),
            None => vec![String::new(); count],
        };
        if names.len() != count {
            return Err(ListenError::Activation(format!(
                "LISTEN_FDS={count} but LISTEN_FDNAMES names {}",
                names.len()
            )));
        }
        // Reads LISTEN_FDS again (the same value) and clears it and
        // LISTEN_PID, so nothing this process starts takes the sockets for
        // its own.
        let fds = listenfd::ListenFd::from_env();
        if fds.len() != count {
            return Err(ListenError::Activation(format!(
                "expected {count} sockets, found {}",
                fds.len()
            )));
        }
        std::env::remove_var("LISTEN_FDNAMES");
        Ok(Some(Activation { names, fds }))
    }

    fn into_listeners(mut self) -> Result<Listeners, ListenError> {
        let names = self.names.clone();
        let index_of = |wanted: &str| names.iter().position(|name| name == wanted);
        // One socket whose name nobody chose: systemd names it after its unit.
        let ingress_index = index_of(INGRESS)
            .or_else(|| (self.names.len() == 1 && self.names[0] != ADMIN).then_some(0));
        let Some(ingress_index) = ingress_index else {
            return Err(ListenError::Activation(format!(
                "no socket is named {INGRESS:?} (FileDescriptorName= in the .socket unit); passed: {}",
                self.names.join(", ")
            )));
        };
        let ingress = self.take(ingress_index)?;
        let admin = match index_of(ADMIN) {
            Some(index) => Some(self.take(index)?),
            None => None,
        };
        for (index, name) in self.names.iter().enumerate() {
            if index != ingress_index && name != ADMIN {
                tracing::warn!(socket = %name, "socket activation passed a socket the relay has no use for; ignored");
            }
        }
        Ok(Listeners {
            ingress,
            admin,
            activated: true,
        })
    }

    fn take(&mut self, index: usize) -> Result<TcpListener, ListenError> {
        let name = self.names[index].clone();
        let not_tcp = |source| ListenError::NotTcp {
            name: name.clone(),
            source,
        };
        let listener = self
            .fds
            .take_tcp_listener(index)
            .map_err(not_tcp)?
            .ok_or_else(|| ListenError::Activation(format!("socket {name:?} was already taken")))?;
        listener.set_nonblocking(true).map_err(not_tcp)?;
        Ok(listener)
    }
}
