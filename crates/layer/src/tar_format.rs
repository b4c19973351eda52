//! The tar format, both ways: ustar headers with PAX extended records for what ustar cannot
//! hold (long names and link targets, large sizes and ids, nanosecond times, xattrs), and the
//! parsing of ustar, PAX and GNU headers.

/// Size of a tar block.
pub(crate) const BLOCK: usize = 512;

/// Entry type flags.
pub(crate) mod kind {
    pub const FILE: u8 = b'0';
    pub const FILE_OLD: u8 = 0;
    pub const HARDLINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR: u8 = b'3';
    pub const BLOCK: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
    pub const CONTIGUOUS: u8 = b'7';
    pub const PAX: u8 = b'x';
    pub const PAX_GLOBAL: u8 = b'g';
    pub const GNU_LONGNAME: u8 = b'L';
    pub const GNU_LONGLINK: u8 = b'K';
}

/// The fields of one header, before encoding.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderFields<'a> {
    /// The path, as bytes (Linux names need not be UTF-8).
    pub name: &'a [u8],
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    pub kind: u8,
    pub linkname: &'a [u8],
    pub uname: &'a str,
    pub gname: &'a str,
    pub devmajor: u32,
    pub devminor: u32,
    pub xattrs: &'a [(String, Vec<u8>)],
    /// Write the nanoseconds of the mtime as a PAX record.
    pub nanos: bool,
}

/// Writes `value` as NUL-terminated octal into `field`; false when it does not fit.
fn put_octal(field: &mut [u8], value: u64) -> bool {
    let digits = field.len() - 1;
    // (22 octal digits hold any u64.)
    if digits < 22 && value >> (3 * digits) != 0 {
        return false;
    }
    write_octal(&mut field[..digits], value);
    field[digits] = 0;
    true
}

/// `value` in octal, zero-padded to fill `out` (which the caller made wide enough): no
/// formatting machinery, since a layer of a million files writes eight of these per file.
fn write_octal(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value & 7) as u8;
        value >>= 3;
    }
}

fn put_str(field: &mut [u8], value: &str) -> bool {
    put_bytes(field, value.as_bytes())
}

fn put_bytes(field: &mut [u8], bytes: &[u8]) -> bool {
    if bytes.len() > field.len() {
        return false;
    }
    field[..bytes.len()].copy_from_slice(bytes);
    true
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len.to_string().len() + rest > len {
        len += 1;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Splits a long name into ustar's prefix (155) and name (100) at a `/`, when possible.
fn split_ustar(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((&[], name));
    }
    let bytes = name;
    let start = bytes.len().saturating_sub(101);
    (start..bytes.len().min(156))
        .filter(|&i| bytes[i] == b'/')
        .map(|i| (&name[..i], &name[i + 1..]))
        .find(|(prefix, rest)| prefix.len() <= 155 && rest.len() <= 100 && !rest.is_empty())
}

fn checksum(block: &mut [u8; BLOCK]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
    // At most 512 * 255, six octal digits; then NUL and space, as tar writes it.
    write_octal(&mut block[148..154], u64::from(sum));
    block[154] = 0;
    block[155] = b' ';
}

fn ustar_block(
    fields: &HeaderFields<'_>,
    name: &[u8],
    prefix: &[u8],
    linkname: &[u8],
    kind: u8,
    size: u64,
) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    put_bytes(&mut block[0..100], name);
    put_octal(&mut block[100..108], u64::from(fields.mode & 0o7777));
    put_octal(&mut block[108..116], fields.uid.min(0o7777777));
    put_octal(&mut block[116..124], fields.gid.min(0o7777777));
    put_octal(&mut block[124..136], size.min(0o77777777777));
    put_octal(
        &mut block[136..148],
        fields.mtime_secs.clamp(0, 0o77777777777) as u64,
    );
    block[156] = kind;
    put_bytes(&mut block[157..257], linkname);
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    if fields.uname.len() <= 32 {
        put_str(&mut block[265..297], fields.uname);
    }
    if fields.gname.len() <= 32 {
        put_str(&mut block[297..329], fields.gname);
    }
    if matches!(fields.kind, kind::CHAR | kind::BLOCK) {
        put_octal(&mut block[329..337], u64::from(fields.devmajor));
        put_octal(&mut block[337..345], u64::from(fields.devminor));
    }
    put_bytes(&mut block[345..500], prefix);
    checksum(&mut block);
    block
}

/// Encodes the header(s) of one entry: a PAX extended header when needed, then the ustar
/// header. The entry's data (if any) follows, padded to a block.
pub(crate) fn encode_header(fields: &HeaderFields<'_>, out: &mut Vec<u8>) {
    let mut pax = Vec::new();
    // A name that is not UTF-8 goes into the PAX records as its bytes, marked the way GNU tar
    // marks it (POSIX's `hdrcharset`), so readers take it as bytes rather than text.
    if std::str::from_utf8(fields.name).is_err() || std::str::from_utf8(fields.linkname).is_err() {
        pax_record(&mut pax, "hdrcharset", b"BINARY");
    }
    let split = if fields.name.is_ascii() {
        split_ustar(fields.name)
    } else {
        None
    };
    let (prefix, name) = match split {
        Some(parts) => parts,
        None => {
            pax_record(&mut pax, "path", fields.name);
            (&[][..], truncate(fields.name, 100))
        }
    };
    let linkname = if fields.linkname.len() > 100 || !fields.linkname.is_ascii() {
        pax_record(&mut pax, "linkpath", fields.linkname);
        truncate(fields.linkname, 100)
    } else {
        fields.linkname
    };
    if fields.size > 0o77777777777 {
        pax_record(&mut pax, "size", fields.size.to_string().as_bytes());
    }
    if fields.uid > 0o7777777 {
        pax_record(&mut pax, "uid", fields.uid.to_string().as_bytes());
    }
    if fields.gid > 0o7777777 {
        pax_record(&mut pax, "gid", fields.gid.to_string().as_bytes());
    }
    if fields.uname.len() > 32 || !fields.uname.is_ascii() {
        pax_record(&mut pax, "uname", fields.uname.as_bytes());
    }
    if fields.gname.len() > 32 || !fields.gname.is_ascii() {
        pax_record(&mut pax, "gname", fields.gname.as_bytes());
    }
    if (fields.nanos && fields.mtime_nanos != 0)
        || fields.mtime_secs < 0
        || fields.mtime_secs > 0o77777777777
    {
        let mtime = if fields.mtime_nanos != 0 && fields.nanos {
            format!("{}.{:09}", fields.mtime_secs, fields.mtime_nanos)
        } else {
            fields.mtime_secs.to_string()
        };
        pax_record(&mut pax, "mtime", mtime.as_bytes());
    }
    let mut xattrs: Vec<&(String, Vec<u8>)> = fields.xattrs.iter().collect();
    xattrs.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, value) in xattrs {
        pax_record(&mut pax, &format!("SCHILY.xattr.{key}"), value);
    }
    if !pax.is_empty() {
        // Go's archive/tar names the extended header after the entry; any name works.
        let base = fields
            .name
            .rsplit(|b| *b == b'/')
            .next()
            .unwrap_or_default();
        let pax_name = [b"PaxHeaders.0/".as_slice(), truncate(base, 80)].concat();
        let pax_fields = HeaderFields {
            mode: 0o644,
            ..HeaderFields::default()
        };
        out.extend_from_slice(&ustar_block(
            &pax_fields,
            truncate(&pax_name, 100),
            &[],
            &[],
            kind::PAX,
            pax.len() as u64,
        ));
        let padded = pax.len().div_ceil(BLOCK) * BLOCK;
        pax.resize(padded, 0);
        out.extend_from_slice(&pax);
    }
    out.extend_from_slice(&ustar_block(
        fields,
        name,
        prefix,
        linkname,
        fields.kind,
        fields.size,
    ));
}

/// The longest prefix of `s` of at most `max` bytes, ending on a character boundary when `s`
/// is UTF-8.
fn truncate(s: &[u8], max: usize) -> &[u8] {
    if s.len() <= max {
        return s;
    }
    let Ok(text) = std::str::from_utf8(s) else {
        return &s[..max];
    };
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses a numeric field: octal (NUL/space padded) or GNU base-256.
pub(crate) fn parse_number(field: &[u8]) -> Option<u64> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        // Base-256: the first byte's top bit marks it; negative values are refused.
        if first & 0x40 != 0 {
            return None;
        }
        let mut value: u64 = u64::from(first & 0x3f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let text: Vec<u8> = field.iter().copied().take_while(|b| *b != 0).collect();
    let text = std::str::from_utf8(&text).ok()?.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// Whether the block's checksum matches (signed or unsigned sum, as readers accept both).
pub(crate) fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let Some(stored) = parse_number(&block[148..156]) else {
        return false;
    };
    let unsigned: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(*b as i8)
            }
        })
        .sum();
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

/// A NUL-terminated string field.
pub(crate) fn field_bytes(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Parses PAX records into (key, value) pairs.
pub(crate) fn parse_pax(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|b| *b == 0) {
            break;
        }
        let space = rest
            .iter()
            .position(|b| *b == b' ')
            .ok_or("PAX record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record with a bad length")?;
        if len <= space + 1 || len > rest.len() {
            return Err("PAX record length out of range".to_owned());
        }
        let record = &rest[space + 1..len];
        let record = record
            .strip_suffix(b"\n")
            .ok_or("PAX record not ended by a newline")?;
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or("PAX record without `=`")?;
        let key = String::from_utf8(record[..eq].to_vec()).map_err(|_| "PAX key is not UTF-8")?;
        records.push((key, record[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        for value_len in [0, 1, 5, 6, 7, 90, 94, 95, 96, 990, 995, 1000] {
            let mut out = Vec::new();
            pax_record(&mut out, "path", &vec![b'a'; value_len]);
            let records = parse_pax(&out).unwrap();
            assert_eq!(records[0].1.len(), value_len);
        }
    }

    #[test]
    fn octal_fields_are_zero_padded_and_refuse_what_does_not_fit() {
        let mut field = [b'x'; 8];
        assert!(put_octal(&mut field, 0o644));
        assert_eq!(&field, b"0000644\0");
        assert!(put_octal(&mut field, 0o7777777));
        assert_eq!(parse_number(&field), Some(0o7777777));
        assert!(
            !put_octal(&mut field, 0o10000000),
            "eight digits in a 7-digit field"
        );
        let mut wide = [0u8; 24];
        assert!(put_octal(&mut wide, u64::MAX));
        assert_eq!(parse_number(&wide), Some(u64::MAX));
        let mut block = [0u8; BLOCK];
        block[0] = b'a';
        checksum(&mut block);
        assert!(checksum_ok(&block));
        assert_eq!(&block[148..156], b"000541\0 ");
    }

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"  755 \0"), Some(0o755));
        assert_eq!(
            parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            Some(1 << 32)
        );
        assert_eq!(parse_number(&[0xff, 0xff]), None, "negative base-256");
    }

    #[test]
    fn ustar_split() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let (prefix, name) = split_ustar(long.as_bytes()).unwrap();
        assert_eq!((prefix.len(), name.len()), (120, 90));
        assert!(split_ustar("x".repeat(101).as_bytes()).is_none());
    }
}
