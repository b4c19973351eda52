//! The real reference registry, started on a free loopback port.

use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::RegistryClient;
use crate::{Error, Result, find_program, tls};

/// How long a start may take before it is judged failed.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The bcrypt cost of htpasswd entries. The registry checks the hash on every request, so the
/// cheapest cost bcrypt allows keeps authenticated tests fast; security is not the point here.
const BCRYPT_COST: u32 = 4;

/// Options for a [`TestRegistry`]; made by [`TestRegistry::builder`].
#[derive(Clone, Default)]
pub struct RegistryBuilder {
    auth: Option<(String, String)>,
    tls: bool,
    read_only: bool,
}

impl fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("user", &self.auth.as_ref().map(|(user, _)| user))
            .field("tls", &self.tls)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl RegistryBuilder {
    /// Requires HTTP basic auth with this one user (an htpasswd file with a bcrypt hash).
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some((user.into(), password.into()));
        self
    }

    /// Serves HTTPS with a server certificate signed by a CA generated for this registry alone
    /// (see [`TestRegistry::ca_pem`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Serves pulls but refuses every push (the registry's read-only maintenance mode): a
    /// cache repository that cannot be written.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Starts the registry and waits until `GET /v2/` answers.
    pub fn start(self) -> Result<TestRegistry> {
        let program = find_program("docker-registry", "docker-registry")?;
        let dir = tempfile::Builder::new()
            .prefix("strata-registry-")
            .tempdir()
            .map_err(Error::io(std::env::temp_dir()))?;
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).map_err(Error::io(&storage))?;

        let mut auth_config = String::new();
        if let Some((user, password)) = &self.auth {
            let hash = bcrypt::hash(password, BCRYPT_COST)
                .map_err(|e| Error::Credentials(format!("htpasswd: {e}")))?;
            let htpasswd = dir.path().join("htpasswd");
            write(&htpasswd, format!("{user}:{hash}\n"))?;
            auth_config = format!(
                "auth:\n  htpasswd:\n    realm: strata-test\n    path: \"{}\"\n",
                htpasswd.display()
            );
        }

        let mut tls_config = String::new();
        let mut ca_pem = None;
        if self.tls {
            let material = tls::generate()?;
            let cert = dir.path().join("server.pem");
            let key = dir.path().join("server-key.pem");
            let ca = dir.path().join("ca.pem");
            write(&cert, &material.cert_pem)?;
            write(&key, &material.key_pem)?;
            write(&ca, &material.ca_pem)?;
            tls_config = format!(
                "  tls:\n    certificate: \"{}\"\n    key: \"{}\"\n",
                cert.display(),
                key.display()
            );
            ca_pem = Some(material.ca_pem);
        }

        let mut registry = TestRegistry {
            program,
            dir,
            port: 0,
            tls: self.tls,
            auth: self.auth,
            ca_pem,
            process: None,
        };
        let read_only = if self.read_only {
            "    readonly:\n      enabled: true\n"
        } else {
            ""
        };
        let mut last_error = None;
        // A free port found by binding port 0 may be taken by someone else before the registry
        // binds it; try a few ports before giving up.
        for _ in 0..5 {
            registry.port = free_port()?;
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n\
                 storage:\n  filesystem:\n    rootdirectory: \"{storage}\"\n  delete:\n    enabled: true\n\
                 \x20 maintenance:\n    uploadpurging:\n      enabled: false\n{read_only}\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: strata-test-secret\n{tls_config}\
                 {auth_config}",
                storage = storage.display(),
                port = registry.port,
            );
            write(&registry.dir.path().join("config.yml"), &config)?;
            match registry.spawn_and_wait() {
                Ok(()) => return Ok(registry),
                Err(e) if e.to_string().contains("address already in use") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::RegistryStart {
            reason: "no free port".to_owned(),
            log: String::new(),
        }))
    }
}

/// A running `docker-registry` process with its own storage, stopped (and its storage removed)
/// when dropped, also when the test panics.
///
/// The process is supervised by a thread of its own, and the kernel kills it when that thread
/// ends (`PR_SET_PDEATHSIG`), so a test process that dies without unwinding leaks no registry.
pub struct TestRegistry {
    program: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
    auth: Option<(String, String)>,
    ca_pem: Option<String>,
    process: Option<Supervised>,
}

impl fmt::Debug for TestRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestRegistry")
            .field("url", &self.url())
            .field("dir", &self.dir.path())
            .field("user", &self.auth.as_ref().map(|(user, _)| user))
            .field("pid", &self.pid())
            .finish()
    }
}

impl TestRegistry {
    /// Starts a registry with no auth over plain HTTP.
    pub fn start() -> Result<TestRegistry> {
        RegistryBuilder::default().start()
    }

    /// Options for a registry with auth or TLS.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port the registry listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// Whether the registry serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The PEM text of the CA that signed the server certificate, when serving HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The path of a file holding [`Self::ca_pem`], when serving HTTPS.
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join("ca.pem"))
    }

    /// The user and password the registry requires, when it requires any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's storage directory (`docker/registry/v2/...` below it), for tests that
    /// corrupt or inspect what the registry holds.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The process id while the registry runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    /// Everything the registry printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A plain-HTTP client for this registry, with its CA trusted and its credentials set.
    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(&self.url(), self.ca_pem(), self.credentials())
    }

    /// A client with the CA trusted but no credentials.
    pub fn anonymous_client(&self) -> RegistryClient {
        RegistryClient::new(&self.url(), self.ca_pem(), None)
    }

    /// A client with the CA trusted and the given credentials, right or wrong.
    pub fn client_with_credentials(&self, user: &str, password: &str) -> RegistryClient {
        RegistryClient::new(&self.url(), self.ca_pem(), Some((user, password)))
    }

    /// Kills the registry process (as a crash would) and waits for it to exit. Its storage is
    /// kept, so that [`Self::restart`] serves the same content on the same port.
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop();
        }
    }

    /// Starts the registry again on the same port with the same storage, stopping it first if
    /// it still runs.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn_and_wait()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let log_path = self.log_path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(Error::io(&log_path))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut command = Command::new(&self.program);
        command
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(Error::io(&log_path))?))
            .stderr(Stdio::from(log));
        let process = Supervised::spawn(command).map_err(|e| Error::RegistryStart {
            reason: format!("spawning {}: {e}", self.program.display()),
            log: String::new(),
        })?;
        self.process = Some(process);

        let client = self.anonymous_client();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.process.as_ref().and_then(Supervised::exit_status) {
                self.process = None;
                return Err(Error::RegistryStart {
                    reason: format!("the process exited early ({status})"),
                    log: log_tail(&log_path, log_start),
                });
            }
            // 200 without auth, 401 with: either way the registry answers.
            if let Ok(200 | 401) = client.ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(Error::RegistryStart {
                    reason: format!("GET /v2/ did not answer within {START_TIMEOUT:?}"),
                    log: log_tail(&log_path, log_start),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    fs::write(path, contents).map_err(Error::io(path))
}

pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::io("127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(Error::io("127.0.0.1:0"))?
        .port();
    Ok(port)
}

/// The last lines written to the log since `start`.
fn log_tail(path: &Path, start: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.seek(SeekFrom::Start(start));
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A child process owned by a thread that lives exactly as long as the child is wanted.
pub(crate) struct Supervised {
    pid: u32,
    status: Arc<Mutex<Option<ExitStatus>>>,
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Supervised {
    pub(crate) fn spawn(mut command: Command) -> std::io::Result<Supervised> {
        set_parent_death_signal(&mut command);
        let (started_tx, started_rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let status = Arc::new(Mutex::new(None));
        let status_in_thread = Arc::clone(&status);
        let thread = std::thread::Builder::new()
            .name("testkit-registry".to_owned())
            .spawn(move || {
                let mut child: Child = match command.spawn() {
                    Ok(child) => child,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(child.id()));
                // Until asked to stop (or the owner is gone), watch for an early exit.
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(Duration::from_millis(25))
                {
                    if let Ok(Some(exit)) = child.try_wait() {
                        if let Ok(mut slot) = status_in_thread.lock() {
                            *slot = Some(exit);
                        }
                        return;
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
            })?;
        let pid = started_rx
            .recv()
            .map_err(|_| std::io::Error::other("the supervisor thread ended before spawning"))??;
        Ok(Supervised {
            pid,
            status,
            stop,
            thread,
        })
    }

    /// Spawns `command` with no input and its output discarded: a server whose own log, if
    /// any, goes to a file.
    pub(crate) fn spawn_quiet(mut command: Command) -> std::io::Result<Supervised> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Supervised::spawn(command)
    }

    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        self.status.lock().ok().and_then(|slot| *slot)
    }

    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Waits until something listens on `127.0.0.1:port`: fails when one of `processes` exits
/// first or `timeout` passes, with `what` and `log()` in the error.
pub(crate) fn wait_listening(
    port: u16,
    processes: &[&Supervised],
    timeout: Duration,
    what: &str,
    log: &dyn Fn() -> String,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = processes.iter().any(|p| p.exit_status().is_some());
        if exited || Instant::now() > deadline {
            return Err(Error::RegistryStart {
                reason: format!("{what} did not listen on port {port}"),
                log: log(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Makes the kernel kill the child when the thread that spawned it ends, however it ends.
#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid, _exit); it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}
