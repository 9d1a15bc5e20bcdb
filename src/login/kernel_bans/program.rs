//! The classic BPF program that drops packets from a set of peer keys.
//!
//! A socket filter runs on every packet the listening socket receives, SYNs included,
//! with the packet's network header reachable at `SKF_NET_OFF`. The program reads the
//! IP version first (an IPv4 packet on a dual-stack IPv6 socket has an IPv4 header),
//! then the source address, masked to the key's prefix, one 32-bit word at a time.
//!
//! Keys are found by a binary search on their first word, so a packet costs tens of
//! instructions however many keys the filter holds: a filter full of attackers does not
//! slow down everyone else's handshakes. Classic BPF only jumps forward, by at most 255
//! instructions on a condition: each branch of the search is a conditional jump over an
//! unconditional one (`ja`, 32-bit), and the keys at a leaf are checked in small chunks,
//! each with its own drop.

use std::net::IpAddr;

use crate::peer::PeerKey;

/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
pub(crate) const MAX_INSTRUCTIONS: usize = 4096;

/// One classic BPF instruction, as `struct sock_filter` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Instruction {
    pub(crate) code: u16,
    pub(crate) jt: u8,
    pub(crate) jf: u8,
    pub(crate) k: u32,
}

// The opcodes this program uses (linux/filter.h, linux/bpf_common.h).
pub(crate) const LD_W_ABS: u16 = 0x20;
pub(crate) const LD_B_ABS: u16 = 0x30;
pub(crate) const LD_MEM: u16 = 0x60;
pub(crate) const ST: u16 = 0x02;
pub(crate) const AND_K: u16 = 0x54;
pub(crate) const JA: u16 = 0x05;
pub(crate) const JEQ_K: u16 = 0x15;
pub(crate) const JGT_K: u16 = 0x25;
pub(crate) const RET_K: u16 = 0x06;

/// Where a load with a negative offset finds the network header (`SKF_NET_OFF`).
pub(crate) const NET_OFFSET: u32 = (-0x10_0000_i32) as u32;
/// A filter's verdicts: how many bytes of the packet to keep.
pub(crate) const DROP: u32 = 0;
pub(crate) const KEEP: u32 = u32::MAX;

/// The source address, in bytes from the start of each family's header.
const IPV4_SOURCE: u32 = 12;
const IPV6_SOURCE: u32 = 8;

/// At most this many keys are checked one after another, before a drop of their own:
/// a check jumps to its drop over at most 8 keys of 4 words (9 instructions each).
const CHUNK: usize = 8;

/// The program that drops packets from as many of `keys`, in order, as fit in `budget`
/// instructions, and how many that is.
pub(crate) fn drop_keys_within(keys: &[PeerKey], budget: usize) -> (Vec<Instruction>, usize) {
    let mut count = keys.len();
    loop {
        let program = drop_keys(&keys[..count]);
        if program.len() <= budget || count == 0 {
            return (program, count);
        }
        // Instructions grow about linearly with keys: shrink in proportion, at least one.
        count = (count * budget / program.len()).min(count - 1);
    }
}

/// The program that drops every packet whose source lies in one of `keys`, and keeps
/// every other packet.
pub(crate) fn drop_keys(keys: &[PeerKey]) -> Vec<Instruction> {
    let mut program = Program::default();
    let (ipv4, ipv6) = (program.label(), program.label());
    // The version nibble: 4 or 6; anything else is kept.
    program.push(LD_B_ABS, NET_OFFSET);
    program.push(AND_K, 0xf0);
    program.jump_if(JEQ_K, 0x40, Target::Skip(1), Target::Skip(0));
    program.jump_if(JEQ_K, 0x60, Target::Skip(1), Target::Skip(2));
    program.jump(ipv4);
    program.jump(ipv6);
    program.push(RET_K, KEEP);

    let mut sections: Vec<Section> = Vec::new();
    for key in keys {
        let network = key.network();
        let (ipv6, words) = match network.addr() {
            IpAddr::V4(v4) => (false, vec![v4.to_bits()]),
            IpAddr::V6(v6) => {
                let bits = v6.to_bits();
                (
                    true,
                    (0..4)
                        .map(|word| (bits >> (96 - 32 * word)) as u32)
                        .collect(),
                )
            }
        };
        let prefix = network.prefix_len();
        let words = &words[..word_count(prefix)];
        match sections
            .iter_mut()
            .find(|section| section.ipv6 == ipv6 && section.prefix == prefix)
        {
            Some(section) => section.keys.push(words.to_vec()),
            None => sections.push(Section {
                ipv6,
                prefix,
                keys: vec![words.to_vec()],
            }),
        }
    }
    for (family, label) in [(false, ipv4), (true, ipv6)] {
        program.place(label);
        for section in sections.iter_mut().filter(|section| section.ipv6 == family) {
            section.keys.sort_unstable();
            section.keys.dedup();
            section.emit(&mut program);
        }
        program.push(RET_K, KEEP);
    }
    program.resolve()
}

/// How many words of the address a key of `prefix` bits compares: at least one, so a
/// /0 key (every address) is a masked word of zero.
fn word_count(prefix: u8) -> usize {
    usize::from(prefix).div_ceil(32).max(1)
}

/// The keys of one family and prefix length: one masked load, one search.
struct Section {
    ipv6: bool,
    prefix: u8,
    /// Each key's words, masked; sorted before emitting.
    keys: Vec<Vec<u32>>,
}

impl Section {
    /// Loads the source's words into the scratch memory (the first stays in `A`), then
    /// searches; a packet that matches no key goes on to the next section.
    fn emit(&self, program: &mut Program) {
        let source = if self.ipv6 { IPV6_SOURCE } else { IPV4_SOURCE };
        let words = word_count(self.prefix);
        for word in (0..words).rev() {
            program.push(LD_W_ABS, NET_OFFSET + source + 4 * word as u32);
            let mask = mask(self.prefix, word);
            if mask != u32::MAX {
                program.push(AND_K, mask);
            }
            if words > 1 {
                program.push(ST, word as u32);
            }
        }
        let done = program.label();
        search(program, &self.keys, done);
        program.place(done);
    }
}

/// The mask of word `word` of an address under a `prefix`-bit key.
fn mask(prefix: u8, word: usize) -> u32 {
    let bits = u32::from(prefix).saturating_sub(32 * word as u32).min(32);
    u32::MAX.checked_shl(32 - bits).unwrap_or(0)
}

/// A binary search on the first word (in `A`), down to leaves of at most [`CHUNK`] keys
/// or of keys that share their first word; `done` follows a miss.
fn search(program: &mut Program, keys: &[Vec<u32>], done: Label) {
    // Split between two different first words, as near the middle as they allow.
    let middle = keys.len() / 2;
    let split = (keys.len() > CHUNK)
        .then(|| {
            let first = |index: usize| keys[index][0];
            let before = (1..=middle).rev().find(|&at| first(at - 1) != first(at));
            let after = (middle + 1..keys.len()).find(|&at| first(at - 1) != first(at));
            match (before, after) {
                (Some(before), Some(after)) if middle - before <= after - middle => Some(before),
                (Some(before), None) => Some(before),
                (_, after) => after,
            }
        })
        .flatten();
    let Some(split) = split else {
        leaf(program, keys, done);
        return;
    };
    let (low, high) = keys.split_at(split);
    let higher = program.label();
    program.jump_if(
        JGT_K,
        low[low.len() - 1][0],
        Target::Skip(0),
        Target::Skip(1),
    );
    program.jump(higher);
    search(program, low, done);
    program.place(higher);
    search(program, high, done);
}

/// Checks `keys` one by one, [`CHUNK`] at a time, each chunk followed by its drop.
fn leaf(program: &mut Program, keys: &[Vec<u32>], done: Label) {
    let mut first_word_in_a = true;
    let chunks = keys.chunks(CHUNK);
    let last = chunks.len() - 1;
    for (index, chunk) in chunks.enumerate() {
        let drop = program.label();
        for key in chunk {
            let next = program.label();
            for (word, value) in key.iter().enumerate() {
                if word > 0 {
                    program.push(LD_MEM, word as u32);
                    first_word_in_a = false;
                } else if !first_word_in_a {
                    program.push(LD_MEM, 0);
                    first_word_in_a = true;
                }
                let matched = if word + 1 == key.len() {
                    Target::Label(drop)
                } else {
                    Target::Skip(0)
                };
                program.jump_if(JEQ_K, *value, matched, Target::Label(next));
            }
            program.place(next);
        }
        if index == last {
            program.jump(done);
        } else {
            program.jump_over_one();
        }
        program.place(drop);
        program.push(RET_K, DROP);
    }
}

/// A place in the program, resolved once the program is complete.
#[derive(Debug, Clone, Copy)]
struct Label(usize);

#[derive(Debug, Clone, Copy)]
enum Target {
    /// Skip this many instructions.
    Skip(u8),
    Label(Label),
}

/// A program under construction: instructions, and jumps to labels not placed yet.
#[derive(Default)]
struct Program {
    instructions: Vec<Instruction>,
    /// Where each label is, once placed.
    labels: Vec<Option<usize>>,
    /// Jumps to patch: (instruction, which field, label).
    fixups: Vec<(usize, Field, Label)>,
}

#[derive(Debug, Clone, Copy)]
enum Field {
    True,
    False,
    Always,
}

impl Program {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn place(&mut self, label: Label) {
        self.labels[label.0] = Some(self.instructions.len());
    }

    fn push(&mut self, code: u16, k: u32) {
        self.instructions.push(Instruction {
            code,
            jt: 0,
            jf: 0,
            k,
        });
    }

    fn jump_if(&mut self, code: u16, k: u32, if_true: Target, if_false: Target) {
        let at = self.instructions.len();
        let mut offset = |target, field| match target {
            Target::Skip(n) => n,
            Target::Label(label) => {
                self.fixups.push((at, field, label));
                0
            }
        };
        let (jt, jf) = (offset(if_true, Field::True), offset(if_false, Field::False));
        self.instructions.push(Instruction { code, jt, jf, k });
    }

    fn jump(&mut self, label: Label) {
        self.fixups
            .push((self.instructions.len(), Field::Always, label));
        self.push(JA, 0);
    }

    fn jump_over_one(&mut self) {
        self.push(JA, 1);
    }

    fn resolve(mut self) -> Vec<Instruction> {
        for (at, field, label) in self.fixups {
            let target = self.labels[label.0].expect("every label is placed");
            let offset = target - (at + 1);
            let instruction = &mut self.instructions[at];
            match field {
                Field::Always => instruction.k = offset as u32,
                Field::True => instruction.jt = short(offset),
                Field::False => instruction.jf = short(offset),
            }
        }
        self.instructions
    }
}

fn short(offset: usize) -> u8 {
    u8::try_from(offset).expect("conditional jumps stay within a chunk")
}
