//! Helpers shared by the fuzz targets: how a fuzzer input is split into a stream and the
//! points at which that stream is cut into chunks.

/// `[n] [n x u16 LE cut] [stream ...]`: `n` is taken modulo 16; missing header bytes count as
/// zero. Returns the stream and its chunks (cuts sorted, each modulo the stream's length + 1),
/// so the stream stays one contiguous byte run that dictionaries and mutations work on.
pub fn chunked(data: &[u8]) -> (&[u8], Vec<&[u8]>) {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let n = usize::from(byte(0) % 16);
    let header = (1 + 2 * n).min(data.len());
    let stream = &data[header..];
    let mut cuts: Vec<usize> = (0..n)
        .map(|i| usize::from(u16::from_le_bytes([byte(1 + 2 * i), byte(2 + 2 * i)])))
        .map(|c| c % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut chunks = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        chunks.push(&stream[start..cut]);
        start = cut;
    }
    chunks.push(&stream[start..]);
    (stream, chunks)
}
