//! `%START_TIME(...)%`: a strftime-style format compiled once, printed in UTC.
//!
//! Envoy hands the format to `absl::FormatTime` after replacing its own extensions (`%f`,
//! `%1f`..`%9f`, `%s`). This module reproduces the output for the specifiers people use; an
//! unknown specifier is printed literally, as absl does (`%Q` prints `%Q`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::num::{write_i64, write_padded};

/// Envoy's default `%START_TIME%` format.
pub(crate) const DEFAULT_START_TIME: &str = "%Y-%m-%dT%H:%M:%E3SZ";

#[derive(Clone, Debug)]
pub(crate) struct TimeFormat {
    segs: Box<[TimeSeg]>,
    /// Segments before the first one that reads below the second: their text is the same for
    /// every record of one second, and is kept per thread ([`SECOND`]).
    per_second: usize,
    /// The segments after `per_second` need only the second and its fraction (the default
    /// format's `%E3S` and `Z`), not the calendar.
    tail_simple: bool,
    /// Tells this format's kept text from another's; clones share it (same segments).
    id: u64,
}

impl PartialEq for TimeFormat {
    fn eq(&self, other: &Self) -> bool {
        self.segs == other.segs
    }
}

impl Eq for TimeFormat {}

/// The text one format printed for one second, up to its `per_second` segments. Records
/// come in time order, so most of them reuse it: the calendar arithmetic and five of the
/// default format's seven numbers are done once a second, not once a record.
struct SecondText {
    id: u64,
    epoch: i64,
    text: Vec<u8>,
}

thread_local! {
    static SECOND: RefCell<SecondText> = const {
        RefCell::new(SecondText { id: u64::MAX, epoch: 0, text: Vec::new() })
    };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Debug, PartialEq, Eq)]
enum TimeSeg {
    Lit(Box<[u8]>),
    /// `%Y`
    Year,
    /// `%E4Y`: at least four digits.
    Year4,
    /// `%C`
    Century,
    /// `%y`
    Year2,
    /// `%m`
    Month,
    /// `%d`
    Day,
    /// `%e`: day, space padded.
    DaySpace,
    /// `%H`
    Hour,
    /// `%k`: hour, space padded.
    HourSpace,
    /// `%I`
    Hour12,
    /// `%l`: 12-hour, space padded.
    Hour12Space,
    /// `%M`
    Minute,
    /// `%S`
    Second,
    /// `%E<n>S`: seconds with n fractional digits (truncated).
    SecondFrac(u8),
    /// `%E*S`: seconds with as many fractional digits as needed (none when whole).
    SecondFracAll,
    /// `%f` (9 digits) and `%<n>f`: the fraction of the second alone.
    Frac(u8),
    /// `%p`
    AmPm,
    /// `%j`
    YearDay,
    /// `%a`
    WeekdayShort,
    /// `%A`
    WeekdayLong,
    /// `%b`, `%h`
    MonthShort,
    /// `%B`
    MonthLong,
    /// `%u`: 1 (Monday) ..= 7.
    WeekdayMon1,
    /// `%w`: 0 (Sunday) ..= 6.
    WeekdaySun0,
    /// `%U`: week of the year, weeks start on Sunday.
    WeekSun,
    /// `%W`: week of the year, weeks start on Monday.
    WeekMon,
    /// `%V`: ISO 8601 week.
    IsoWeek,
    /// `%G`: ISO 8601 week-based year.
    IsoYear,
    /// `%g`: ISO 8601 week-based year, two digits.
    IsoYear2,
    /// `%s`: seconds since the epoch.
    Epoch,
    /// `%z`: always `+0000` (UTC).
    Offset,
    /// `%Ez`: always `+00:00`.
    OffsetColon,
    /// `%Z`: always `UTC`.
    ZoneName,
}

/// Why a START_TIME format was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimeFormatError {
    pub offset: usize,
    pub reason: &'static str,
}

impl TimeFormat {
    pub(crate) fn default_format() -> TimeFormat {
        // The default format is a constant known to compile.
        TimeFormat::parse(DEFAULT_START_TIME).unwrap_or_else(|_| TimeFormat::new(Vec::new()))
    }

    pub(crate) fn parse(fmt: &str) -> Result<TimeFormat, TimeFormatError> {
        let b = fmt.as_bytes();
        let mut segs: Vec<TimeSeg> = Vec::new();
        let mut lit: Vec<u8> = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'%' {
                lit.push(b[i]);
                i += 1;
                continue;
            }
            let Some(&c) = b.get(i + 1) else {
                // A trailing lone '%' prints as itself.
                lit.push(b'%');
                i += 1;
                continue;
            };
            use TimeSeg::*;
            let simple: Option<&[TimeSeg]> = match c {
                b'Y' => Some(&[Year]),
                b'C' => Some(&[Century]),
                b'y' => Some(&[Year2]),
                b'm' => Some(&[Month]),
                b'd' => Some(&[Day]),
                b'e' => Some(&[DaySpace]),
                b'H' => Some(&[Hour]),
                b'k' => Some(&[HourSpace]),
                b'I' => Some(&[Hour12]),
                b'l' => Some(&[Hour12Space]),
                b'M' => Some(&[Minute]),
                b'S' => Some(&[Second]),
                b'f' => Some(&[Frac(9)]),
                b'p' => Some(&[AmPm]),
                b'j' => Some(&[YearDay]),
                b'a' => Some(&[WeekdayShort]),
                b'A' => Some(&[WeekdayLong]),
                b'b' | b'h' => Some(&[MonthShort]),
                b'B' => Some(&[MonthLong]),
                b'u' => Some(&[WeekdayMon1]),
                b'w' => Some(&[WeekdaySun0]),
                b'U' => Some(&[WeekSun]),
                b'W' => Some(&[WeekMon]),
                b'V' => Some(&[IsoWeek]),
                b'G' => Some(&[IsoYear]),
                b'g' => Some(&[IsoYear2]),
                b's' => Some(&[Epoch]),
                b'z' => Some(&[Offset]),
                b'Z' => Some(&[ZoneName]),
                _ => None,
            };
            if let Some(s) = simple {
                for seg in s {
                    push(&mut segs, &mut lit, seg.clone());
                }
                i += 2;
                continue;
            }
            match c {
                b'%' => {
                    lit.push(b'%');
                    i += 2;
                }
                b't' => {
                    lit.push(b'\t');
                    i += 2;
                }
                // Envoy refuses a START_TIME format that would break the line.
                b'n' => {
                    return Err(TimeFormatError {
                        offset: i,
                        reason: "%n would print a newline",
                    })
                }
                // Composite specifiers, expanded once here.
                b'T' | b'X' => {
                    expand(
                        &mut segs,
                        &mut lit,
                        &[Hour],
                        b":",
                        &[Minute],
                        b":",
                        &[Second],
                    );
                    i += 2;
                }
                b'R' => {
                    flush_lit(&mut segs, &mut lit);
                    segs.push(Hour);
                    segs.push(Lit(Box::new(*b":")));
                    segs.push(Minute);
                    i += 2;
                }
                b'F' => {
                    expand(&mut segs, &mut lit, &[Year], b"-", &[Month], b"-", &[Day]);
                    i += 2;
                }
                b'D' | b'x' => {
                    expand(&mut segs, &mut lit, &[Month], b"/", &[Day], b"/", &[Year2]);
                    i += 2;
                }
                b'c' => {
                    // "%a %b %e %H:%M:%S %Y"
                    flush_lit(&mut segs, &mut lit);
                    segs.extend([
                        WeekdayShort,
                        Lit(Box::new(*b" ")),
                        MonthShort,
                        Lit(Box::new(*b" ")),
                        DaySpace,
                        Lit(Box::new(*b" ")),
                        Hour,
                        Lit(Box::new(*b":")),
                        Minute,
                        Lit(Box::new(*b":")),
                        Second,
                        Lit(Box::new(*b" ")),
                        Year,
                    ]);
                    i += 2;
                }
                b'1'..=b'9' if b.get(i + 2) == Some(&b'f') => {
                    push(&mut segs, &mut lit, Frac(c - b'0'));
                    i += 3;
                }
                b'E' => match (b.get(i + 2), b.get(i + 3)) {
                    (Some(b'*'), Some(b'S')) => {
                        push(&mut segs, &mut lit, SecondFracAll);
                        i += 4;
                    }
                    (Some(&d @ b'0'..=b'9'), Some(b'S')) => {
                        push(
                            &mut segs,
                            &mut lit,
                            if d == b'0' {
                                Second
                            } else {
                                SecondFrac(d - b'0')
                            },
                        );
                        i += 4;
                    }
                    (Some(b'4'), Some(b'Y')) => {
                        push(&mut segs, &mut lit, Year4);
                        i += 4;
                    }
                    (Some(b'z'), _) => {
                        push(&mut segs, &mut lit, OffsetColon);
                        i += 3;
                    }
                    _ => {
                        lit.extend_from_slice(b"%E");
                        i += 2;
                    }
                },
                _ => {
                    // Unknown specifier: printed as written, like absl. Keep UTF-8 whole.
                    lit.push(b'%');
                    i += 1;
                }
            }
        }
        flush_lit(&mut segs, &mut lit);
        Ok(TimeFormat::new(segs))
    }

    fn new(segs: Vec<TimeSeg>) -> TimeFormat {
        use TimeSeg::*;
        let sub_second = |s: &TimeSeg| matches!(s, SecondFrac(_) | SecondFracAll | Frac(_));
        let per_second = segs.iter().position(sub_second).unwrap_or(segs.len());
        let tail_simple = segs[per_second..]
            .iter()
            .all(|s| sub_second(s) || matches!(s, Lit(_) | Second));
        TimeFormat {
            segs: segs.into_boxed_slice(),
            per_second,
            tail_simple,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Appends `t` formatted in UTC.
    pub(crate) fn write(&self, t: SystemTime, out: &mut Vec<u8>) {
        let (epoch, nanos) = epoch_nanos(t);
        if self.per_second == 0 || !self.tail_simple {
            let c = Civil::from_epoch(epoch, nanos);
            for seg in self.segs.iter() {
                c.write_seg(seg, out);
            }
            return;
        }
        SECOND.with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.id != self.id || kept.epoch != epoch {
                let c = Civil::from_epoch(epoch, nanos);
                kept.text.clear();
                for seg in &self.segs[..self.per_second] {
                    c.write_seg(seg, &mut kept.text);
                }
                kept.id = self.id;
                kept.epoch = epoch;
            }
            out.extend_from_slice(&kept.text);
        });
        let second = epoch.rem_euclid(60) as u32;
        for seg in &self.segs[self.per_second..] {
            write_tail_seg(seg, second, nanos, out);
        }
    }
}

/// Seconds since the epoch (floored) and the nanoseconds into that second.
fn epoch_nanos(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            // Before 1970: floor to the whole second below.
            let d = e.duration();
            let mut s = -(d.as_secs() as i64);
            let mut n = d.subsec_nanos();
            if n > 0 {
                s -= 1;
                n = 1_000_000_000 - n;
            }
            (s, n)
        }
    }
}

/// A segment after the kept text: one that `tail_simple` allows.
fn write_tail_seg(seg: &TimeSeg, second: u32, nanos: u32, out: &mut Vec<u8>) {
    // The calendar fields are not read by these segments; zero is never printed.
    let c = Civil {
        epoch: 0,
        nanos,
        year: 0,
        month: 1,
        day: 1,
        hour: 0,
        minute: 0,
        second,
        yday: 0,
        wday: 0,
    };
    c.write_seg(seg, out);
}

fn push(segs: &mut Vec<TimeSeg>, lit: &mut Vec<u8>, seg: TimeSeg) {
    flush_lit(segs, lit);
    segs.push(seg);
}

fn flush_lit(segs: &mut Vec<TimeSeg>, lit: &mut Vec<u8>) {
    if !lit.is_empty() {
        segs.push(TimeSeg::Lit(std::mem::take(lit).into_boxed_slice()));
    }
}

fn expand(
    segs: &mut Vec<TimeSeg>,
    lit: &mut Vec<u8>,
    a: &[TimeSeg],
    s1: &[u8],
    b: &[TimeSeg],
    s2: &[u8],
    c: &[TimeSeg],
) {
    flush_lit(segs, lit);
    segs.extend_from_slice(a);
    segs.push(TimeSeg::Lit(s1.into()));
    segs.extend_from_slice(b);
    segs.push(TimeSeg::Lit(s2.into()));
    segs.extend_from_slice(c);
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
/// Days before the first of each month in a common year.
const DAYS_BEFORE_MONTH: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];

/// A UTC calendar breakdown of one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    epoch: i64,
    nanos: u32,
    year: i64,
    /// 1 ..= 12
    month: u32,
    /// 1 ..= 31
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0-based day of the year.
    yday: u32,
    /// 0 = Sunday.
    wday: u32,
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (the well-known era/day-of-era
/// decomposition: 400-year eras of 146097 days, years starting in March).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Civil {
    fn from_epoch(epoch: i64, nanos: u32) -> Civil {
        let days = epoch.div_euclid(86_400);
        let sod = epoch.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let yday =
            DAYS_BEFORE_MONTH[(month - 1) as usize] + u32::from(month > 2 && is_leap(year)) + day
                - 1;
        // 1970-01-01 was a Thursday.
        let wday = (days + 4).rem_euclid(7) as u32;
        Civil {
            epoch,
            nanos,
            year,
            month,
            day,
            hour: sod / 3600,
            minute: sod / 60 % 60,
            second: sod % 60,
            yday,
            wday,
        }
    }

    /// ISO 8601 (week-based year, week number).
    fn iso_week(&self) -> (i64, u32) {
        let wday_mon1 = if self.wday == 0 { 7 } else { self.wday } as i64;
        let ordinal = i64::from(self.yday) + 1;
        let week = (ordinal - wday_mon1 + 10) / 7;
        if week < 1 {
            (self.year - 1, weeks_in_iso_year(self.year - 1))
        } else if week > i64::from(weeks_in_iso_year(self.year)) {
            (self.year + 1, 1)
        } else {
            (self.year, week as u32)
        }
    }

    fn write_seg(&self, seg: &TimeSeg, out: &mut Vec<u8>) {
        use TimeSeg::*;
        match seg {
            Lit(b) => out.extend_from_slice(b),
            Year => write_i64(out, self.year),
            Year4 => {
                if self.year < 0 {
                    out.push(b'-');
                }
                write_padded(out, self.year.unsigned_abs(), 4, b'0');
            }
            Century => write_padded(out, self.year.div_euclid(100).unsigned_abs(), 2, b'0'),
            Year2 => write_padded(out, self.year.rem_euclid(100) as u64, 2, b'0'),
            Month => write_padded(out, self.month.into(), 2, b'0'),
            Day => write_padded(out, self.day.into(), 2, b'0'),
            DaySpace => write_padded(out, self.day.into(), 2, b' '),
            Hour => write_padded(out, self.hour.into(), 2, b'0'),
            HourSpace => write_padded(out, self.hour.into(), 2, b' '),
            Hour12 => write_padded(out, hour12(self.hour).into(), 2, b'0'),
            Hour12Space => write_padded(out, hour12(self.hour).into(), 2, b' '),
            Minute => write_padded(out, self.minute.into(), 2, b'0'),
            Second => write_padded(out, self.second.into(), 2, b'0'),
            SecondFrac(n) => {
                write_padded(out, self.second.into(), 2, b'0');
                out.push(b'.');
                write_frac(out, self.nanos, *n);
            }
            SecondFracAll => {
                write_padded(out, self.second.into(), 2, b'0');
                if self.nanos > 0 {
                    let mut digits = 9u8;
                    let mut n = self.nanos;
                    while n.is_multiple_of(10) {
                        n /= 10;
                        digits -= 1;
                    }
                    out.push(b'.');
                    write_padded(out, n.into(), digits.into(), b'0');
                }
            }
            Frac(n) => write_frac(out, self.nanos, *n),
            AmPm => out.extend_from_slice(if self.hour < 12 { b"AM" } else { b"PM" }),
            YearDay => write_padded(out, (self.yday + 1).into(), 3, b'0'),
            WeekdayShort => out.extend_from_slice(&WEEKDAYS[self.wday as usize].as_bytes()[..3]),
            WeekdayLong => out.extend_from_slice(WEEKDAYS[self.wday as usize].as_bytes()),
            MonthShort => out.extend_from_slice(&MONTHS[(self.month - 1) as usize].as_bytes()[..3]),
            MonthLong => out.extend_from_slice(MONTHS[(self.month - 1) as usize].as_bytes()),
            WeekdayMon1 => write_padded(
                out,
                if self.wday == 0 { 7 } else { self.wday.into() },
                1,
                b'0',
            ),
            WeekdaySun0 => write_padded(out, self.wday.into(), 1, b'0'),
            WeekSun => write_padded(out, ((self.yday + 7 - self.wday) / 7).into(), 2, b'0'),
            WeekMon => write_padded(
                out,
                ((self.yday + 7 - (self.wday + 6) % 7) / 7).into(),
                2,
                b'0',
            ),
            IsoWeek => write_padded(out, self.iso_week().1.into(), 2, b'0'),
            IsoYear => write_i64(out, self.iso_week().0),
            IsoYear2 => write_padded(out, self.iso_week().0.rem_euclid(100) as u64, 2, b'0'),
            Epoch => write_i64(out, self.epoch),
            Offset => out.extend_from_slice(b"+0000"),
            OffsetColon => out.extend_from_slice(b"+00:00"),
            ZoneName => out.extend_from_slice(b"UTC"),
        }
    }
}

fn hour12(h: u32) -> u32 {
    match h % 12 {
        0 => 12,
        x => x,
    }
}

/// The first `digits` digits of the nine-digit nanosecond fraction (truncated, as absl does).
fn write_frac(out: &mut Vec<u8>, nanos: u32, digits: u8) {
    let digits = digits.clamp(1, 9);
    let v = nanos / 10u32.pow(9 - u32::from(digits));
    write_padded(out, v.into(), digits.into(), b'0');
}

fn weeks_in_iso_year(y: i64) -> u32 {
    // A year has 53 ISO weeks when it starts on a Thursday, or is leap and starts on a Wednesday.
    let jan1 = Civil::from_epoch(days_from_civil(y, 1, 1) * 86_400, 0).wday;
    if jan1 == 4 || (is_leap(y) && jan1 == 3) {
        53
    } else {
        52
    }
}

/// Inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(epoch: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(epoch, nanos)
    }

    fn fmt(f: &str, t: SystemTime) -> String {
        let mut out = Vec::new();
        TimeFormat::parse(f).unwrap().write(t, &mut out);
        String::from_utf8(out).unwrap()
    }

    // 2026-11-26T05:02:53.415918Z, the instant Envoy 1.40 printed in the oracle run below.
    const ORACLE: u64 = 1_795_669_373;

    #[test]
    fn default_format_matches_envoy() {
        assert_eq!(
            fmt(DEFAULT_START_TIME, at(ORACLE, 415_918_000)),
            "2026-11-26T05:02:53.415Z"
        );
        // The S1 seed line's timestamp.
        assert_eq!(
            fmt(DEFAULT_START_TIME, at(1_700_038_118, 683_999_999)),
            "2023-11-15T08:48:38.683Z"
        );
        assert_eq!(
            fmt(DEFAULT_START_TIME, at(0, 0)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    /// Each expectation is what Envoy 1.40 printed for the same instant and format.
    #[test]
    fn strftime_specifiers_match_envoy() {
        let t = at(ORACLE, 415_918_000);
        assert_eq!(
            fmt("%Y/%m/%d %H:%M:%S|%y|%j|%s|%z|%Z|%b|%a", t),
            "2026/11/26 05:02:53|26|330|1795669373|+0000|UTC|Nov|Thu"
        );
        assert_eq!(
            fmt("%E1S|%E3S|%E6S|%E9S|%E*S|%f|%3f|%6f|%9f|%Ez", t),
            "53.4|53.415|53.415918|53.415918000|53.415918|415918000|415|415918|415918000|+00:00"
        );
        assert_eq!(
            fmt("%e|%A|%B|%T|%F|%D|%p|%I|%u|%w|%C|%%|%h|%k|%l|%R|%G|%V|%U|%t|%c|%x|%X|%E4Y", t),
            "26|Thursday|November|05:02:53|2026-11-26|11/26/26|AM|05|4|4|20|%|Nov| 5| 5|05:02|2026|48|47|\t|Thu Nov 26 05:02:53 2026|11/26/26|05:02:53|2026"
        );
        assert_eq!(fmt("%s.%3f %E2S %4f %1f", t), "1795669373.415 53.41 4159 4");
        assert_eq!(fmt("%E0S", t), "53");
    }

    #[test]
    fn unknown_specifiers_print_literally_like_absl() {
        let t = at(ORACLE, 415_918_000);
        assert_eq!(fmt("%Q|%E|x%", t), "%Q|%E|x%");
        assert_eq!(fmt("%€", t), "%€");
    }

    #[test]
    fn whole_seconds_and_edges() {
        assert_eq!(fmt("%E*S", at(ORACLE, 0)), "53");
        assert_eq!(fmt("%E*S", at(ORACLE, 500_000_000)), "53.5");
        assert_eq!(fmt("%E*S", at(ORACLE, 1)), "53.000000001");
        assert_eq!(
            fmt("%I %p %l", at(ORACLE - 5 * 3600 - 2 * 60, 0)),
            "12 AM 12"
        );
        assert_eq!(fmt("%I %p", at(ORACLE + 8 * 3600, 0)), "01 PM");
    }

    #[test]
    fn newline_is_refused() {
        assert_eq!(TimeFormat::parse("%Y%n").unwrap_err().offset, 2);
    }

    #[test]
    fn calendar_round_trips_and_leap_years() {
        for days in [
            -800_000i64,
            -1,
            0,
            59,
            60,
            365,
            10_956,
            11_016,
            20_000,
            2_932_896,
        ] {
            let c = Civil::from_epoch(days * 86_400, 0);
            assert_eq!(days_from_civil(c.year, c.month, c.day), days);
        }
        // 2024-02-29 and 2024-12-31 (yday 365 in a leap year).
        let c = Civil::from_epoch(days_from_civil(2024, 2, 29) * 86_400, 0);
        assert_eq!((c.month, c.day, c.yday), (2, 29, 59));
        let c = Civil::from_epoch(days_from_civil(2024, 12, 31) * 86_400, 0);
        assert_eq!(c.yday, 365);
        // 2000-03-01 after a 400-year leap day.
        let c = Civil::from_epoch(days_from_civil(2000, 3, 1) * 86_400, 0);
        assert_eq!((c.year, c.month, c.day, c.yday), (2000, 3, 1, 60));
    }

    #[test]
    fn iso_weeks() {
        let w = |y, m, d| Civil::from_epoch(days_from_civil(y, m, d) * 86_400, 0).iso_week();
        assert_eq!(w(2021, 1, 1), (2020, 53));
        assert_eq!(w(2024, 12, 30), (2025, 1));
        assert_eq!(w(2026, 11, 26), (2026, 48));
        assert_eq!(w(2015, 12, 31), (2015, 53));
    }

    #[test]
    fn before_the_epoch() {
        assert_eq!(
            fmt(DEFAULT_START_TIME, UNIX_EPOCH - Duration::from_millis(1)),
            "1969-12-31T23:59:59.999Z"
        );
    }

    fn write(f: &TimeFormat, t: SystemTime) -> String {
        let mut out = Vec::new();
        f.write(t, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// The text kept per second belongs to one format and one second: formats written in
    /// turn, seconds going forward and back, and a format without a sub-second field all
    /// print what a fresh computation prints.
    #[test]
    fn text_kept_per_second_follows_format_and_second() {
        let default = TimeFormat::parse(DEFAULT_START_TIME).unwrap();
        let other = TimeFormat::parse("%d/%b/%Y:%H:%M:%S.%3f %s").unwrap();
        let whole = TimeFormat::parse("%Y-%m-%d %H:%M:%S").unwrap();
        let calendar_after = TimeFormat::parse("%f %Y").unwrap();
        assert_eq!(default, default.clone());
        assert_eq!(default, TimeFormat::parse(DEFAULT_START_TIME).unwrap());
        let cases = [
            (ORACLE, 415_918_000, "2026-11-26T05:02:53.415Z"),
            (ORACLE, 999_999_999, "2026-11-26T05:02:53.999Z"),
            (ORACLE + 1, 0, "2026-11-26T05:02:54.000Z"),
            (ORACLE + 7, 5_000_000, "2026-11-26T05:03:00.005Z"),
            (ORACLE, 1_000_000, "2026-11-26T05:02:53.001Z"),
        ];
        // One format alone: consecutive records of one second reuse the kept text.
        for (epoch, nanos, text) in cases {
            assert_eq!(write(&default, at(epoch, nanos)), text);
        }
        // Formats in turn: each takes the kept text over from the other.
        for (epoch, nanos, text) in cases {
            let t = at(epoch, nanos);
            assert_eq!(write(&default, t), text);
            assert_eq!(
                write(&other, t),
                fmt("%d/%b/%Y:%H:%M:%S.%3f %s", t),
                "{epoch}.{nanos}"
            );
            assert_eq!(write(&whole, t), fmt("%Y-%m-%d %H:%M:%S", t));
            assert_eq!(write(&calendar_after, t), fmt("%f %Y", t));
        }
        assert_eq!(
            write(&other, at(ORACLE, 415_918_000)),
            "26/Nov/2026:05:02:53.415 1795669373"
        );
        assert_eq!(write(&calendar_after, at(ORACLE, 7)), "000000007 2026");
        assert_eq!(
            write(&default, UNIX_EPOCH - Duration::from_millis(1001)),
            "1969-12-31T23:59:58.999Z"
        );
    }
}
