//! The padded rows a row-by-row fused op keeps for a 3x3 window moving down a map (`MbConv`,
//! `PatchEmbed`): three rows in a ring, each with a zero column at both ends and, for a stride-2
//! window, stored as its even then its odd columns so that each tap of consecutive outputs reads
//! contiguous values.

/// Layout of one padded row of a `w`-wide map for a window of `stride` 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaddedRow {
    pub w: usize,
    pub stride: usize,
}

impl PaddedRow {
    /// Values per padded row: the map's `w` and the two zero columns.
    // A row's length, never empty (`w + 2`): no `is_empty` to go with it.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        self.w + 2
    }

    /// Where padded column `p` (0 and `w + 1` are the zeros) lives in the row.
    pub fn at(self, p: usize) -> usize {
        match self.stride {
            1 => p,
            _ => (p & 1) * self.len().div_ceil(2) + p / 2,
        }
    }

    /// Writes the map's row `src` (`w` values) into padded row `row`, zeros untouched.
    pub fn store(self, src: &[f32], row: &mut [f32]) {
        if self.stride == 1 {
            row[1..=self.w].copy_from_slice(src);
            return;
        }
        // Padded column i + 1: src[2j] (odd column 2j + 1) is odd[j], src[2j + 1] (even
        // column 2j + 2) is even[j + 1].
        let (even, odd) = row.split_at_mut(self.len().div_ceil(2));
        let pairs = src.chunks_exact(2);
        if let [last] = pairs.remainder() {
            odd[self.w / 2] = *last;
        }
        for (j, pair) in pairs.enumerate() {
            odd[j] = pair[0];
            even[j + 1] = pair[1];
        }
    }

    /// A row of zeros outside the map (the window's padding rows).
    pub fn clear(self, row: &mut [f32]) {
        (1..=self.w).for_each(|i| row[self.at(i)] = 0.0);
    }

    /// Zeros in the padding columns of every row of `rows` (rows of [`PaddedRow::len`]).
    pub fn zero_padding(self, rows: &mut [f32]) {
        let pads = [self.at(0), self.at(self.len() - 1)];
        for row in rows.chunks_exact_mut(self.len()) {
            pads.iter().for_each(|&p| row[p] = 0.0);
        }
    }
}

/// The ring slot of map row `r` (-1 upwards): three consecutive rows never share one.
pub fn slot(r: isize) -> usize {
    (r + 1).rem_euclid(3) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_rows_put_every_value_where_at_says() {
        for (w, stride) in [(6, 1), (6, 2), (7, 2), (1, 2)] {
            let r = PaddedRow { w, stride };
            let src: Vec<f32> = (1..=w).map(|v| v as f32).collect();
            let mut row = vec![f32::NAN; r.len()];
            r.zero_padding(&mut row);
            r.store(&src, &mut row);
            let padded: Vec<f32> = (0..r.len()).map(|p| row[r.at(p)]).collect();
            let want: Vec<f32> = std::iter::once(0.0).chain(src).chain([0.0]).collect();
            assert_eq!(padded, want, "w {w} stride {stride}");
        }
    }
}
