//! Just enough ELF32 (little-endian, as ARM firmware is) to read section sizes and symbol
//! addresses from the built firmware: no crate needed for a fixed, simple layout.

use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;

fn u16_at(b: &[u8], o: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        b.get(o..o + 2).context("ELF truncated")?.try_into()?,
    ))
}
fn u32_at(b: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        b.get(o..o + 4).context("ELF truncated")?.try_into()?,
    ))
}

fn cstr(b: &[u8], o: usize) -> String {
    let end = b[o.min(b.len())..]
        .iter()
        .position(|&c| c == 0)
        .map_or(b.len(), |p| o + p);
    String::from_utf8_lossy(&b[o.min(b.len())..end]).into_owned()
}

pub struct Section {
    pub name: String,
    pub kind: u32,
    /// Load address (`sh_addr`).
    pub addr: u32,
    pub offset: usize,
    pub size: usize,
    pub link: usize,
}

pub struct Elf {
    pub sections: Vec<Section>,
    pub symbols: BTreeMap<String, u32>,
}

pub fn parse(b: &[u8]) -> Result<Elf> {
    ensure!(b.len() >= 52 && &b[..4] == b"\x7fELF", "not an ELF file");
    ensure!(
        b[4] == 1 && b[5] == 1,
        "not a 32-bit little-endian ELF (not ARM firmware)"
    );
    let shoff = u32_at(b, 32)? as usize;
    let shentsize = u16_at(b, 46)? as usize;
    let shnum = u16_at(b, 48)? as usize;
    let shstrndx = u16_at(b, 50)? as usize;
    let mut raw = Vec::new();
    for i in 0..shnum {
        let o = shoff + i * shentsize;
        raw.push((
            u32_at(b, o)?,
            u32_at(b, o + 4)?,
            u32_at(b, o + 12)?,
            u32_at(b, o + 16)? as usize,
            u32_at(b, o + 20)? as usize,
            u32_at(b, o + 24)? as usize,
        ));
    }
    let strtab = raw.get(shstrndx).context("ELF section names missing")?.3;
    let sections: Vec<Section> = raw
        .iter()
        .map(|&(name, kind, addr, offset, size, link)| Section {
            name: cstr(b, strtab + name as usize),
            kind,
            addr,
            offset,
            size,
            link,
        })
        .collect();
    let mut symbols = BTreeMap::new();
    if let Some(st) = sections.iter().find(|s| s.kind == 2) {
        let names = sections
            .get(st.link)
            .context("ELF symbol names missing")?
            .offset;
        for i in 0..st.size / 16 {
            let o = st.offset + i * 16;
            let name = cstr(b, names + u32_at(b, o)? as usize);
            if !name.is_empty() {
                symbols.insert(name, u32_at(b, o + 4)?);
            }
        }
    }
    Ok(Elf { sections, symbols })
}

impl Elf {
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// Total size of the sections whose name is `name` or starts with `name.`.
    pub fn size_of(&self, name: &str) -> usize {
        self.sections
            .iter()
            .filter(|s| s.name == name || s.name.starts_with(&format!("{name}.")))
            .map(|s| s.size)
            .sum()
    }
}
