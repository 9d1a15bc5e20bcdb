//! Reading a small file an operator names (a configuration file, a certificate) with a
//! bound on its size, so that a wrong path (a log, a device) cannot fill the memory.

use std::{fs::File, io, io::Read};

/// The bytes of `file`, refused past `max`: unread if its metadata shows a larger
/// size, else once `max` bytes are read (a pipe tells no size; a file may grow after
/// it is looked at). `what` names the file in the error: "a configuration file is at
/// most …".
pub(crate) fn read_at_most(file: File, max: u64, what: &str) -> io::Result<Vec<u8>> {
    let too_long = |len: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes: {what} is at most {max}"),
        )
    };
    let len = file.metadata()?.len();
    if len > max {
        return Err(too_long(&len));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_long(&format_args!("over {max}")));
    }
    Ok(bytes)
}
