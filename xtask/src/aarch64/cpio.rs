//! A writer of the initramfs format the kernel unpacks: a `newc` cpio archive
//! (uncompressed), with directories and regular files only, owned by root.

use std::io::Write;

/// One archive being written to `out`.
pub struct Cpio<W: Write> {
    out: W,
    inode: u32,
}

impl<W: Write> std::fmt::Debug for Cpio<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cpio")
            .field("inode", &self.inode)
            .finish_non_exhaustive()
    }
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;

impl<W: Write> Cpio<W> {
    pub fn new(out: W) -> Self {
        Self { out, inode: 1 }
    }

    /// A directory `path` (relative, no leading `/`), mode 0755.
    pub fn dir(&mut self, path: &str) -> std::io::Result<()> {
        self.entry(path, S_IFDIR | 0o755, &[])
    }

    /// A regular file `path` with `data`, mode `mode` (permission bits).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(path, S_IFREG | mode, data)
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other(format!("{path}: over 4 GiB")))?;
        let name_len =
            u32::try_from(path.len() + 1).map_err(|_| std::io::Error::other("path too long"))?;
        let inode = if mode == 0 { 0 } else { self.inode };
        self.inode += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        // magic, then ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
        // rdevminor namesize check, each 8 hex digits.
        let mut header = String::from("070701");
        for field in [inode, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, name_len, 0] {
            header.push_str(&format!("{field:08X}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(path.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + path.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    /// Pads to the format's 4-byte alignment after `written` bytes.
    fn pad(&mut self, written: usize) -> std::io::Result<()> {
        let zeros = (4 - written % 4) % 4;
        self.out.write_all(&[0; 3][..zeros])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_newc_and_four_byte_aligned() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.dir("tests").unwrap_or_default();
        cpio.file("init", 0o755, b"hello").unwrap_or_default();
        let bytes = cpio.finish().unwrap_or_default();
        // 110-byte header + "tests\0" (6) = 116, aligned; then the file's header.
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(&bytes[110..116], b"tests\0");
        assert_eq!(&bytes[116..122], b"070701");
        // The file: header + "init\0" (115, padded to 116), then "hello" padded to 8.
        let file = 116;
        assert_eq!(&bytes[file + 14..file + 22], b"000081ED", "mode 0100755");
        assert_eq!(&bytes[file + 54..file + 62], b"00000005", "size");
        assert_eq!(&bytes[file + 116..file + 121], b"hello");
        let trailer = file + 124;
        assert_eq!(&bytes[trailer + 110..trailer + 121], b"TRAILER!!!\0");
        assert_eq!(bytes.len() % 4, 0);
    }
}
