use std::path::Path;
pub fn file(_d: &Path, _f: &str, _o: &mut dyn std::io::Write) -> anyhow::Result<()> { todo!() }
pub fn dir(_d: &Path, _o: &mut dyn std::io::Write) -> anyhow::Result<()> { todo!() }
