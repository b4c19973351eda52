//! Real object-store servers on loopback, for context tests: moto's S3 server and
//! gcp-storage-emulator (from PyPI, in the virtual environment `scripts/test` makes under
//! `target/test-tools/venv`) and Azurite (from npm, under `target/test-tools/npm`). Objects
//! are put with each provider's own client library (boto3, the JSON API, azure-storage-blob).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Result;
use crate::error::Error;
use crate::registry::{Supervised, free_port, wait_listening};

/// Which object store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// moto's S3 server.
    S3,
    /// gcp-storage-emulator.
    Gcs,
    /// Azurite's blob service.
    Azure,
}

/// Azurite's well-known development account and key.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// The key of [`AZURITE_ACCOUNT`] (public, documented by Microsoft).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running server; it stops when dropped.
pub struct ObjectServer {
    kind: ObjectKind,
    port: u16,
    _dir: tempfile::TempDir,
    process: Option<Supervised>,
}

/// `target/test-tools` of the workspace, where `scripts/test` installs the servers.
pub fn test_tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools")
}

fn tool(path: &Path, what: &str) -> Result<PathBuf> {
    if path.exists() {
        Ok(path.to_owned())
    } else {
        Err(Error::MissingProgram {
            program: format!("{what} ({})", path.display()),
            package: "(PyPI/npm: run scripts/test, which installs it under target/test-tools)"
                .to_owned(),
        })
    }
}

impl ObjectServer {
    /// Starts the server for `kind` on a free loopback port.
    pub fn start(kind: ObjectKind) -> Result<ObjectServer> {
        let tools = test_tools();
        let dir = tempfile::tempdir().map_err(Error::io("temporary directory"))?;
        let port = free_port()?;
        let command = match kind {
            ObjectKind::S3 => {
                let mut c = Command::new(tool(&tools.join("venv/bin/moto_server"), "moto")?);
                c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                c
            }
            ObjectKind::Gcs => {
                tool(
                    &tools.join("venv/bin/gcp-storage-emulator"),
                    "gcp-storage-emulator",
                )?;
                let mut c = Command::new(tool(&tools.join("venv/bin/python"), "python")?);
                c.arg("-c")
                    .arg(include_str!("gcs_emulator.py"))
                    .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
                    .arg("--in-memory");
                c
            }
            ObjectKind::Azure => {
                let mut c = Command::new(tool(
                    &tools.join("npm/node_modules/.bin/azurite-blob"),
                    "azurite",
                )?);
                c.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                    .arg("--location")
                    .arg(dir.path())
                    .args(["--silent", "--skipApiVersionCheck", "--loose"]);
                c
            }
        };
        let process = Supervised::spawn_quiet(command).map_err(Error::io("object server"))?;
        wait_listening(
            port,
            &[&process],
            Duration::from_secs(30),
            &format!("the {kind:?} server"),
            &String::new,
        )?;
        Ok(ObjectServer {
            kind,
            port,
            _dir: dir,
            process: Some(process),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket` (an Azure container) and puts `bytes` as `key` in it.
    pub fn put(&self, bucket: &str, key: &str, file: &Path) -> Result<()> {
        let python = tool(
            &test_tools().join("venv/bin/python"),
            "the test virtual environment",
        )?;
        let script = match self.kind {
            ObjectKind::S3 => {
                "import boto3,sys\n\
                 s3=boto3.client('s3',endpoint_url=sys.argv[1],aws_access_key_id='testing',\
                 aws_secret_access_key='testing',region_name='us-east-1')\n\
                 try:\n s3.create_bucket(Bucket=sys.argv[2])\nexcept Exception:\n pass\n\
                 s3.upload_file(sys.argv[4],sys.argv[2],sys.argv[3])\n"
            }
            ObjectKind::Gcs => {
                "import json,sys,urllib.request as u\n\
                 base=sys.argv[1]\n\
                 try:\n u.urlopen(u.Request(base+'/storage/v1/b?project=test',\
                 data=json.dumps({'name':sys.argv[2]}).encode(),\
                 headers={'Content-Type':'application/json'}))\nexcept Exception:\n pass\n\
                 data=open(sys.argv[4],'rb').read()\n\
                 u.urlopen(u.Request(base+'/upload/storage/v1/b/'+sys.argv[2]+\
                 '/o?uploadType=media&name='+sys.argv[3],data=data,\
                 headers={'Content-Type':'application/octet-stream'}))\n"
            }
            ObjectKind::Azure => {
                "import sys\nfrom azure.storage.blob import BlobServiceClient\n\
                 c=BlobServiceClient.from_connection_string(sys.argv[5])\n\
                 try:\n c.create_container(sys.argv[2])\nexcept Exception:\n pass\n\
                 c.get_blob_client(sys.argv[2],sys.argv[3]).upload_blob(\
                 open(sys.argv[4],'rb'),overwrite=True)\n"
            }
        };
        let connection = format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};\
             BlobEndpoint={}/{AZURITE_ACCOUNT};",
            self.endpoint()
        );
        let output = Command::new(&python)
            .arg("-c")
            .arg(script)
            .arg(self.endpoint())
            .arg(bucket)
            .arg(key)
            .arg(file)
            .arg(connection)
            .output()
            .map_err(Error::io(&python))?;
        if !output.status.success() {
            return Err(Error::Http {
                method: "PUT",
                url: format!("{:?} {bucket}/{key}", self.kind),
                message: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(())
    }
}

impl Drop for ObjectServer {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop();
        }
    }
}
