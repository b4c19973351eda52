//! Pulls an image from a registry into an OCI image layout, with the registry crate alone.
//!
//! ```sh
//! cargo run --example pull -- docker.io/library/busybox:latest out/busybox
//! cargo run --example pull -- localhost:5000/team/app:1 out/app --platform linux/arm64
//! ```
//!
//! Credentials come from the Docker config (`DOCKER_CONFIG`, `~/.docker/config.json`) and
//! the containers auth files; loopback registries get plain HTTP. The image is tagged
//! `latest` in the layout, so `skopeo inspect oci:out/busybox:latest` reads it.

use strata::registry::{Layout, Platform, Reference, RegistryClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (reference, dir, platform) = match args.as_slice() {
        [reference, dir] => (reference, dir, Platform::host()),
        [reference, dir, flag, platform] if flag == "--platform" => {
            let mut parts = platform.splitn(3, '/');
            let (Some(os), Some(architecture)) = (parts.next(), parts.next()) else {
                return Err(format!("--platform {platform}: expected OS/ARCH[/VARIANT]").into());
            };
            let variant = parts.next().map(str::to_owned);
            let (os, architecture) = (os.to_owned(), architecture.to_owned());
            (
                reference,
                dir,
                Platform {
                    os,
                    architecture,
                    variant,
                },
            )
        }
        _ => return Err("usage: pull REFERENCE DIR [--platform OS/ARCH[/VARIANT]]".into()),
    };

    let reference = Reference::parse(reference)?;
    let layout = Layout::open(dir)?;
    let client = RegistryClient::builder().build();
    // Blobs already in the layout are not downloaded again; each one is verified against
    // its digest while it streams to a temporary file.
    let pulled = client.pull(&reference, &platform, &layout).await?;
    layout.tag("latest", &pulled.descriptor())?;
    println!(
        "{reference} ({platform}) is {} in {dir}:latest; {} of {} blobs downloaded",
        pulled.manifest_digest,
        pulled.downloaded,
        pulled.layer_digests.len() + 1
    );
    Ok(())
}
