//! The `netfence` command line.
fn main() -> anyhow::Result<()> {
    Ok(())
}
