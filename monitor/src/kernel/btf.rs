//! Byte offsets of kernel struct fields and the names of an enum's values, from the running
//! kernel's BTF (`/sys/kernel/btf/vmlinux`). The tracepoint programs read sockets through
//! such offsets, which differ between kernel builds, and reset reasons are named by the
//! kernel's enum; aya does not expose BTF member offsets, and this is all the BTF reading
//! they need: structs, unions, their members (anonymous ones searched through), typedefs and
//! qualifiers, and 32-bit enums.

use std::collections::HashMap;

use anyhow::{Context as _, bail};

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Anonymous members are searched this deep (the kernel nests a few levels at most).
const MAX_ANONYMOUS_DEPTH: usize = 8;

struct Member {
    name: String,
    type_id: u32,
    /// In bits.
    offset: u32,
    /// A bitfield (its offset may still fall on a byte: it is not a whole field there).
    bitfield: bool,
}

enum Type {
    /// A struct or union.
    Composite {
        members: Vec<Member>,
    },
    /// A typedef, const, volatile, restrict or type tag: its target.
    Alias(u32),
    Other,
}

/// A member found by name: its bit offset, type and whether it is a bitfield.
struct Found {
    offset: u32,
    type_id: u32,
    bitfield: bool,
}

/// The struct and union layouts, and the named enums, of one BTF blob.
pub struct KernelBtf {
    /// Index = type id (id 0 is void).
    types: Vec<Type>,
    structs: HashMap<String, u32>,
    /// Each named enum's values: (name, value).
    enums: HashMap<String, Vec<(String, i64)>>,
}

/// The running kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

impl KernelBtf {
    pub fn parse(data: &[u8]) -> anyhow::Result<Self> {
        let u16_at = |at: usize| {
            data.get(at..at + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        if u16_at(0) != Some(BTF_MAGIC) {
            bail!("not little-endian BTF");
        }
        let header = Reader { data, at: 0 };
        let hdr_len = header.u32_at(4)? as usize;
        let (type_off, type_len) = (header.u32_at(8)? as usize, header.u32_at(12)? as usize);
        let str_off = header.u32_at(16)? as usize;
        let strings = data.get(hdr_len + str_off..).context("string section")?;
        let type_start = hdr_len + type_off;
        let section = data
            .get(type_start..type_start + type_len)
            .context("type section")?;
        let mut btf = KernelBtf {
            types: vec![Type::Other],
            structs: HashMap::new(),
            enums: HashMap::new(),
        };
        let mut reader = Reader {
            data: section,
            at: 0,
        };
        while reader.at < section.len() {
            btf.read_type(&mut reader, strings)?;
        }
        Ok(btf)
    }

    fn read_type(&mut self, reader: &mut Reader, strings: &[u8]) -> anyhow::Result<()> {
        let name = string_at(strings, reader.next_u32()?);
        let info = reader.next_u32()?;
        let size_or_type = reader.next_u32()?;
        let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, info & 0xffff, info >> 31 == 1);
        let id = self.types.len() as u32;
        let parsed = match kind {
            KIND_STRUCT | KIND_UNION => {
                let mut members = Vec::with_capacity(vlen as usize);
                for _ in 0..vlen {
                    let name = string_at(strings, reader.next_u32()?);
                    let type_id = reader.next_u32()?;
                    let offset = reader.next_u32()?;
                    // With kind_flag the top 8 bits are a bitfield's size.
                    let (offset, bitfield) = if kind_flag {
                        (offset & 0xff_ffff, offset >> 24 != 0)
                    } else {
                        (offset, false)
                    };
                    members.push(Member {
                        name,
                        type_id,
                        offset,
                        bitfield,
                    });
                }
                if kind == KIND_STRUCT && !name.is_empty() {
                    self.structs.entry(name).or_insert(id);
                }
                Type::Composite { members }
            }
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                Type::Alias(size_or_type)
            }
            KIND_ENUM => {
                let mut values = Vec::with_capacity(vlen as usize);
                for _ in 0..vlen {
                    let value_name = string_at(strings, reader.next_u32()?);
                    let value = reader.next_u32()?;
                    // kind_flag marks a signed enum.
                    let value = if kind_flag {
                        i64::from(value as i32)
                    } else {
                        i64::from(value)
                    };
                    values.push((value_name, value));
                }
                if !name.is_empty() {
                    self.enums.entry(name).or_insert(values);
                }
                Type::Other
            }
            _ => {
                reader.skip(trailing_bytes(kind, vlen))?;
                Type::Other
            }
        };
        self.types.push(parsed);
        Ok(())
    }

    /// The byte offset of `path` (member names, one per level) inside `struct NAME`.
    pub fn offset_of(&self, name: &str, path: &[&str]) -> anyhow::Result<u32> {
        let mut type_id = *self
            .structs
            .get(name)
            .with_context(|| format!("no struct {name} in the kernel's BTF"))?;
        let mut bits = 0;
        let mut bitfield = false;
        for member in path {
            let found = self
                .find_member(type_id, member, 0)
                .with_context(|| format!("struct {name} has no member {}", path.join(".")))?;
            bits += found.offset;
            type_id = found.type_id;
            bitfield = found.bitfield;
        }
        if bitfield || bits % 8 != 0 {
            bail!("{name}.{} is a bitfield", path.join("."));
        }
        Ok(bits / 8)
    }

    /// The values of `enum NAME`, as (name, value).
    pub fn enum_values(&self, name: &str) -> anyhow::Result<&[(String, i64)]> {
        self.enums
            .get(name)
            .map(Vec::as_slice)
            .with_context(|| format!("no enum {name} in the kernel's BTF"))
    }

    /// A member (its offset from `type_id`'s start), looking inside anonymous structs and
    /// unions.
    fn find_member(&self, type_id: u32, name: &str, depth: usize) -> Option<Found> {
        let Type::Composite { members } = self.types.get(self.resolve(type_id) as usize)? else {
            return None;
        };
        if let Some(member) = members.iter().find(|m| m.name == name) {
            return Some(Found {
                offset: member.offset,
                type_id: member.type_id,
                bitfield: member.bitfield,
            });
        }
        if depth >= MAX_ANONYMOUS_DEPTH {
            return None;
        }
        members.iter().filter(|m| m.name.is_empty()).find_map(|m| {
            let found = self.find_member(m.type_id, name, depth + 1)?;
            Some(Found {
                offset: m.offset + found.offset,
                ..found
            })
        })
    }

    /// Follows typedefs and qualifiers (a bounded number of them: BTF could loop).
    fn resolve(&self, mut type_id: u32) -> u32 {
        for _ in 0..MAX_ANONYMOUS_DEPTH {
            match self.types.get(type_id as usize) {
                Some(Type::Alias(target)) => type_id = *target,
                _ => break,
            }
        }
        type_id
    }
}

/// Bytes after the 12-byte common header of a type of `kind` (btf.rst, "Type Encoding").
fn trailing_bytes(kind: u32, vlen: u32) -> usize {
    let vlen = vlen as usize;
    match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_FUNC_PROTO => 8 * vlen,
        KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        _ => 0,
    }
}

fn string_at(strings: &[u8], offset: u32) -> String {
    let tail = strings.get(offset as usize..).unwrap_or_default();
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    String::from_utf8_lossy(&tail[..end]).into_owned()
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u32_at(&self, offset: usize) -> anyhow::Result<u32> {
        let bytes = self.data.get(offset..offset + 4).context("truncated BTF")?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    fn next_u32(&mut self) -> anyhow::Result<u32> {
        let value = self.u32_at(self.at)?;
        self.at += 4;
        Ok(value)
    }

    fn skip(&mut self, bytes: usize) -> anyhow::Result<()> {
        if self.at + bytes > self.data.len() {
            bail!("truncated BTF");
        }
        self.at += bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: `struct inner { int a; int b; }`, `typedef struct inner alias;` and
    /// `struct outer { int x; union { int y; alias z; }; }` (the union anonymous), and
    /// `enum colour { RED = 0, BLUE = 7 }`, and `struct flags { int low:8; int proto:8; }`.
    fn sample() -> Vec<u8> {
        let strings =
            b"\0int\0a\0b\0inner\0alias\0outer\0x\0y\0z\0colour\0RED\0BLUE\0flags\0low\0proto\0";
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            let at = strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes());
            at.unwrap() as u32 + 1
        };
        let mut types: Vec<u32> = Vec::new();
        // 1: int (4 bytes), with its 4 trailing bytes.
        types.extend([name("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner { a @0, b @32 bits }
        types.extend([name("inner"), KIND_STRUCT << 24 | 2, 8]);
        types.extend([name("a"), 1, 0, name("b"), 1, 32]);
        // 3: typedef alias -> 2
        types.extend([name("alias"), KIND_TYPEDEF << 24, 2]);
        // 4: anonymous union { y: int @0, z: alias @0 }
        types.extend([0, KIND_UNION << 24 | 2, 8]);
        types.extend([name("y"), 1, 0, name("z"), 3, 0]);
        // 5: struct outer { x: int @0, (anonymous union) @64 bits }
        types.extend([name("outer"), KIND_STRUCT << 24 | 2, 16]);
        types.extend([name("x"), 1, 0, 0, 4, 64]);
        // 6: enum colour (4 bytes) { RED = 0, BLUE = 7 }
        types.extend([name("colour"), KIND_ENUM << 24 | 2, 4]);
        types.extend([name("RED"), 0, name("BLUE"), 7]);
        // 7: struct flags (kind_flag: sizes in the offsets' top bits) { low:8 @0, proto:8 @8 }
        types.extend([name("flags"), 1 << 31 | KIND_STRUCT << 24 | 2, 4]);
        types.extend([name("low"), 1, 8 << 24, name("proto"), 1, 8 << 24 | 8]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut blob = Vec::new();
        blob.extend(BTF_MAGIC.to_le_bytes());
        blob.extend([1, 0]);
        for value in [24, 0, type_bytes.len() as u32, type_bytes.len() as u32] {
            blob.extend(value.to_le_bytes());
        }
        blob.extend((strings.len() as u32).to_le_bytes());
        blob.extend(type_bytes);
        blob.extend(strings);
        blob
    }

    #[test]
    fn offsets_are_found_through_anonymous_members_and_typedefs() {
        let btf = KernelBtf::parse(&sample()).unwrap();
        assert_eq!(btf.offset_of("outer", &["x"]).unwrap(), 0);
        assert_eq!(btf.offset_of("outer", &["y"]).unwrap(), 8);
        assert_eq!(btf.offset_of("outer", &["z", "b"]).unwrap(), 12);
        assert_eq!(btf.offset_of("inner", &["b"]).unwrap(), 4);
        assert!(btf.offset_of("outer", &["missing"]).is_err());
        assert!(btf.offset_of("nothing", &["x"]).is_err());
        let err = btf.offset_of("flags", &["proto"]).unwrap_err();
        assert!(
            err.to_string().contains("flags.proto is a bitfield"),
            "{err}"
        );
    }

    #[test]
    fn enum_values_are_named() {
        let btf = KernelBtf::parse(&sample()).unwrap();
        let values = btf.enum_values("colour").unwrap();
        assert_eq!(values, [("RED".to_owned(), 0), ("BLUE".to_owned(), 7)]);
        assert!(btf.enum_values("outer").is_err());
    }

    #[test]
    fn hostile_blobs_are_errors_not_panics() {
        let blob = sample();
        for len in 0..blob.len() {
            let _ = KernelBtf::parse(&blob[..len]);
        }
        assert!(KernelBtf::parse(b"\0\0\0\0").is_err());
    }
}
