//! The runtime's errors: a kind a caller can match on, and a message that
//! says what went wrong and what to do.

/// What kind of failure, for callers that act on it (exit statuses, API
/// answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A flag or option the runtime cannot take.
    InvalidArgument,
    /// No such container or image.
    NotFound,
    /// A container name that another container has.
    NameConflict,
    /// The container or image is in a state that forbids the request.
    InUse,
    /// The image is missing, corrupt or hostile, or could not be pulled.
    Image,
    /// The guest failed: panicked, hung, or broke the protocol.
    Guest,
    /// The host failed: files, sockets, KVM.
    Host,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    /// The guest console's last lines, for guest failures.
    pub console: Vec<String>,
    /// The exit status a CLI gives for it: 125, or 126/127 when the
    /// container's command could not be run.
    pub code: i32,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            console: Vec::new(),
            code: 125,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, message)
    }

    pub fn image(message: impl Into<String>) -> Self {
        Self::new(Kind::Image, message)
    }

    pub fn host(message: impl Into<String>) -> Self {
        Self::new(Kind::Host, message)
    }

    pub fn in_use(message: impl Into<String>) -> Self {
        Self::new(Kind::InUse, message)
    }
}

impl From<vmm::Error> for Error {
    fn from(e: vmm::Error) -> Self {
        let kind = match e {
            vmm::Error::Cpus { .. }
            | vmm::Error::MemoryTooSmall(_)
            | vmm::Error::MemoryTooLarge(_) => Kind::InvalidArgument,
            _ => Kind::Host,
        };
        Self::new(kind, e.to_string())
    }
}
