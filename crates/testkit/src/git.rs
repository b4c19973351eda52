//! Real git servers on loopback: `git http-backend` behind Debian's lighttpd (plain HTTP, and
//! HTTPS with basic auth and the test CA), and `git daemon` for the git protocol, all serving
//! the bare repositories of one directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::Error;
use crate::program::find_program;
use crate::registry::{Supervised, free_port, wait_listening};
use crate::{Result, tls};

/// The servers; they stop when dropped.
pub struct GitServer {
    dir: tempfile::TempDir,
    http_port: u16,
    https_port: u16,
    daemon_port: u16,
    credentials: (String, String),
    ca_pem: String,
    processes: Vec<Supervised>,
}

impl GitServer {
    /// Serves the bare repositories in `repos` (`NAME.git` directories): over plain HTTP
    /// without authentication (`/git/NAME.git`), over HTTPS with basic auth as `user` and
    /// `password` (`/git/NAME.git`), and with `git daemon`.
    pub fn start(repos: &Path, user: &str, password: &str) -> Result<GitServer> {
        let lighttpd = find_program("lighttpd", "lighttpd")?;
        let git = find_program("git", "git")?;
        let backend = git_exec_path(&git)?.join("git-http-backend");
        if !backend.exists() {
            return Err(Error::MissingProgram {
                program: "git-http-backend".to_owned(),
                package: "git".to_owned(),
            });
        }
        if !Path::new("/usr/lib/lighttpd/mod_openssl.so").exists() {
            return Err(Error::MissingProgram {
                program: "lighttpd's mod_openssl".to_owned(),
                package: "lighttpd-mod-openssl".to_owned(),
            });
        }
        let dir = tempfile::tempdir().map_err(Error::io("temporary directory"))?;
        let material = tls::generate()?;
        let pem = dir.path().join("server.pem");
        std::fs::write(&pem, format!("{}{}", material.cert_pem, material.key_pem))
            .map_err(Error::io(&pem))?;
        let users = dir.path().join("users");
        std::fs::write(&users, format!("{user}:{password}\n")).map_err(Error::io(&users))?;
        let (http_port, https_port, daemon_port) = (free_port()?, free_port()?, free_port()?);
        let root = dir.path().join("www");
        std::fs::create_dir(&root).map_err(Error::io(&root))?;
        let config = format!(
            r#"server.modules = ("mod_alias", "mod_setenv", "mod_cgi", "mod_auth", "mod_authn_file", "mod_openssl")
server.document-root = "{root}"
server.bind = "127.0.0.1"
server.port = {http_port}
server.errorlog = "{dir}/error.log"
server.max-request-size = 0
alias.url = ("/git" => "{backend}")
$HTTP["url"] =~ "^/git" {{
    cgi.assign = ("" => "")
    setenv.add-environment = (
        "GIT_PROJECT_ROOT" => "{repos}",
        "GIT_HTTP_EXPORT_ALL" => ""
    )
}}
$SERVER["socket"] == "127.0.0.1:{https_port}" {{
    ssl.engine = "enable"
    ssl.pemfile = "{pem}"
    auth.backend = "plain"
    auth.backend.plain.userfile = "{users}"
    auth.require = ("/git" => ("method" => "basic", "realm" => "git", "require" => "valid-user"))
}}
"#,
            root = root.display(),
            dir = dir.path().display(),
            backend = backend.display(),
            repos = repos.display(),
            pem = pem.display(),
            users = users.display(),
        );
        let config_path = dir.path().join("lighttpd.conf");
        std::fs::write(&config_path, config).map_err(Error::io(&config_path))?;
        let mut command = Command::new(&lighttpd);
        command.arg("-D").arg("-f").arg(&config_path);
        let mut processes = vec![Supervised::spawn_quiet(command).map_err(Error::io(&lighttpd))?];
        let mut daemon = Command::new(&git);
        daemon
            .arg("daemon")
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={daemon_port}"))
            .arg(format!("--base-path={}", repos.display()))
            .arg(repos);
        processes.push(Supervised::spawn_quiet(daemon).map_err(Error::io(&git))?);
        let server = GitServer {
            dir,
            http_port,
            https_port,
            daemon_port,
            credentials: (user.to_owned(), password.to_owned()),
            ca_pem: material.ca_pem,
            processes,
        };
        let ca = server.dir.path().join("ca.pem");
        std::fs::write(&ca, &server.ca_pem).map_err(Error::io(&ca))?;
        let processes: Vec<&Supervised> = server.processes.iter().collect();
        for port in [http_port, https_port, daemon_port] {
            wait_listening(
                port,
                &processes,
                Duration::from_secs(10),
                "the git servers",
                &|| server.log(),
            )?;
        }
        Ok(server)
    }

    /// `http://127.0.0.1:PORT/git/NAME` (no authentication).
    pub fn http_url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/git/{name}", self.http_port)
    }

    /// `https://127.0.0.1:PORT/git/NAME` (basic auth, the test CA).
    pub fn https_url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/git/{name}", self.https_port)
    }

    /// `git://127.0.0.1:PORT/NAME`.
    pub fn git_url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.daemon_port)
    }

    /// The directory served as static files (`https://127.0.0.1:PORT/NAME`, no auth).
    pub fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// `https://127.0.0.1:PORT/NAME`: a static file of [`GitServer::www`].
    pub fn file_url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}", self.https_port)
    }

    /// The HTTPS server's credentials.
    pub fn credentials(&self) -> (&str, &str) {
        (&self.credentials.0, &self.credentials.1)
    }

    /// The PEM file of the CA that signed the HTTPS server's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The last lines of lighttpd's error log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        for process in self.processes.drain(..) {
            process.stop();
        }
    }
}

fn git_exec_path(git: &Path) -> Result<PathBuf> {
    let output = Command::new(git)
        .arg("--exec-path")
        .output()
        .map_err(Error::io(git))?;
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    ))
}

/// Runs `git` with `args` in `dir` with a fixed identity and dates; fails with its output.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let program = find_program("git", "git")?;
    let output = Command::new(&program)
        .current_dir(dir)
        .args([
            "-c",
            "protocol.file.allow=always",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_AUTHOR_NAME", "strata tests")
        .env("GIT_AUTHOR_EMAIL", "tests@strata.invalid")
        .env("GIT_COMMITTER_NAME", "strata tests")
        .env("GIT_COMMITTER_EMAIL", "tests@strata.invalid")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .map_err(Error::io(&program))?;
    if !output.status.success() {
        return Err(Error::Http {
            method: "git",
            url: args.join(" "),
            message: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// OpenSSH's `sshd` on a loopback port, serving the repositories of the machine by absolute
/// path to the current user, with a generated host key and a generated client key; it stops
/// when dropped.
pub struct SshServer {
    dir: tempfile::TempDir,
    port: u16,
    process: Option<Supervised>,
}

impl SshServer {
    /// Starts `sshd` (Debian's `openssh-server`) on a free port.
    pub fn start() -> Result<SshServer> {
        let sshd = PathBuf::from("/usr/sbin/sshd");
        if !sshd.exists() {
            return Err(Error::MissingProgram {
                program: "sshd".to_owned(),
                package: "openssh-server".to_owned(),
            });
        }
        let keygen = find_program("ssh-keygen", "openssh-client")?;
        let dir = tempfile::tempdir().map_err(Error::io("temporary directory"))?;
        for name in ["host_key", "client_key"] {
            let status = Command::new(&keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.path().join(name))
                .status()
                .map_err(Error::io(&keygen))?;
            if !status.success() {
                return Err(Error::Credentials(format!("ssh-keygen {name} failed")));
            }
        }
        let public = std::fs::read_to_string(dir.path().join("client_key.pub"))
            .map_err(Error::io(dir.path()))?;
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, public).map_err(Error::io(&authorized))?;
        // sshd's privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port()?;
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {authorized}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {pid}\n",
            host = dir.path().join("host_key").display(),
            authorized = authorized.display(),
            pid = dir.path().join("sshd.pid").display(),
        );
        let config_path = dir.path().join("sshd_config");
        std::fs::write(&config_path, config).map_err(Error::io(&config_path))?;
        let host_public = std::fs::read_to_string(dir.path().join("host_key.pub"))
            .map_err(Error::io(dir.path()))?;
        let known = dir.path().join("known_hosts");
        std::fs::write(&known, format!("[127.0.0.1]:{port} {host_public}"))
            .map_err(Error::io(&known))?;
        let mut command = Command::new(&sshd);
        command.arg("-D").arg("-f").arg(&config_path);
        let process = Supervised::spawn_quiet(command).map_err(Error::io(&sshd))?;
        wait_listening(
            port,
            &[&process],
            Duration::from_secs(10),
            "sshd",
            &String::new,
        )?;
        Ok(SshServer {
            dir,
            port,
            process: Some(process),
        })
    }

    /// `ssh://USER@127.0.0.1:PORT/ABSOLUTE/PATH` for a repository on this machine.
    pub fn url(&self, path: &Path) -> String {
        let user = std::env::var("USER").unwrap_or_else(|_| "root".to_owned());
        format!("ssh://{user}@127.0.0.1:{}{}", self.port, path.display())
    }

    /// An `ssh` command with the client key, checking the host against `known_hosts` (the
    /// server's own key unless `known_hosts` is given).
    pub fn ssh_command(&self, known_hosts: Option<&Path>) -> String {
        let known = known_hosts.map_or_else(|| self.dir.path().join("known_hosts"), Path::to_owned);
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} \
             -o StrictHostKeyChecking=yes -o BatchMode=yes",
            self.dir.path().join("client_key").display(),
            known.display()
        )
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop();
        }
    }
}

/// A repository at `dir` (made when missing) holding `files`, committed with `message`;
/// returns the commit id.
pub fn commit_files(dir: &Path, files: &crate::ContextBuilder, message: &str) -> Result<String> {
    files.write_into(dir)?;
    if !dir.join(".git").exists() {
        git(dir, &["init", "-q"])?;
    }
    git(dir, &["add", "."])?;
    git(dir, &["commit", "-qm", message])?;
    git(dir, &["rev-parse", "HEAD"])
}
