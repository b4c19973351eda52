//! The shortest useful embedding of strata in a Rust CI tool: build a context, then write
//! the image out (or push it: `image.push("registry.example.com/team/app:1").await?`).
//!
//! ```sh
//! cargo run --example embed -- examples/hello out/embedded
//! ```

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let context = args.next().unwrap_or_else(|| "examples/hello".to_owned());
    let output = args.next().unwrap_or_else(|| "out/embedded".to_owned());

    // Every knob has a default: the Dockerfile in the context, the host's platform, the
    // state directory under ~/.cache/strata, the local cache on.
    let image = strata::Build::new(&context)
        .on_event(|event| {
            if let strata::Event::StepStarted { text, .. } = event {
                eprintln!("step: {text}");
            }
        })
        .run()
        .await?;

    image.write_oci_layout(output.as_ref(), "latest")?;
    println!("{} written to {output}", image.digest());
    Ok(())
}
