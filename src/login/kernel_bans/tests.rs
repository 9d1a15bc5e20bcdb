//! The filter program, run on packets by a classic BPF interpreter that behaves as the
//! kernel's does for the instructions it uses: every family, prefix and layout that
//! loopback cannot show. Then the filter's upkeep, `refresh` called by the test on a
//! filter that no task keeps, in paused time.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    num::NonZeroU32,
    os::fd::AsFd,
    sync::{Arc, Weak},
    time::Duration,
};

use proptest::{collection::vec, prelude::*};

use super::{KernelBans, KernelBansStats, program::*};
use crate::{
    login::Login,
    peer::{PeerKey, PeerKeying},
};

/// What the kernel's interpreter does with `program` on a packet whose network header
/// is `packet`: the verdict (0 drops), and how many instructions ran.
fn run(program: &[Instruction], packet: &[u8]) -> (u32, usize) {
    let (mut a, mut memory, mut pc, mut steps) = (0_u32, [0_u32; 16], 0_usize, 0);
    loop {
        let Instruction { code, jt, jf, k } = program[pc];
        steps += 1;
        pc += 1;
        let load = |size: usize| {
            let offset = k.wrapping_sub(NET_OFFSET) as usize;
            // A load past the packet ends the program with 0, as in the kernel.
            packet.get(offset..offset + size)
        };
        match code {
            LD_W_ABS => match load(4) {
                Some(word) => a = u32::from_be_bytes(word.try_into().unwrap()),
                None => return (0, steps),
            },
            LD_B_ABS => match load(1) {
                Some(byte) => a = u32::from(byte[0]),
                None => return (0, steps),
            },
            LD_MEM => a = memory[k as usize],
            ST => memory[k as usize] = a,
            AND_K => a &= k,
            JA => pc += k as usize,
            JEQ_K => pc += usize::from(if a == k { jt } else { jf }),
            JGT_K => pc += usize::from(if a > k { jt } else { jf }),
            RET_K => return (k, steps),
            other => panic!("opcode {other:#x} is not interpreted"),
        }
    }
}

/// An IPv4 SYN's network header and TCP header, the shortest there is: 40 bytes.
fn ipv4_packet(source: Ipv4Addr) -> Vec<u8> {
    let mut packet = vec![0; 40];
    packet[0] = 0x45;
    packet[12..16].copy_from_slice(&source.octets());
    packet
}

/// An IPv6 SYN: 40 bytes of header and 20 of TCP.
fn ipv6_packet(source: Ipv6Addr) -> Vec<u8> {
    let mut packet = vec![0; 60];
    packet[0] = 0x60;
    packet[8..24].copy_from_slice(&source.octets());
    packet
}

/// The packet `source` sends: IPv4 for an IPv4 or IPv4-mapped address (on a dual-stack
/// socket the kernel hands the filter the IPv4 header).
fn packet_from(source: IpAddr) -> Vec<u8> {
    match source.to_canonical() {
        IpAddr::V4(v4) => ipv4_packet(v4),
        IpAddr::V6(v6) => ipv6_packet(v6),
    }
}

fn dropped(program: &[Instruction], source: &str) -> bool {
    run(program, &packet_from(source.parse().unwrap())).0 == DROP
}

fn keys(keying: &PeerKeying, sources: &[&str]) -> Vec<PeerKey> {
    sources
        .iter()
        .map(|source| keying.key(source.parse().unwrap()))
        .collect()
}

#[test]
fn an_empty_filter_keeps_everything() {
    let program = drop_keys(&[]);
    for source in ["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"] {
        assert!(!dropped(&program, source), "{source}");
    }
}

#[test]
fn ipv4_keys_drop_their_address_only() {
    let keying = PeerKeying::default();
    let program = drop_keys(&keys(&keying, &["192.0.2.1", "198.51.100.7"]));
    assert!(dropped(&program, "192.0.2.1"));
    assert!(dropped(&program, "198.51.100.7"));
    assert!(!dropped(&program, "192.0.2.2"));
    assert!(!dropped(&program, "2001:db8::1"));
}

/// An IPv4 client behind a NAT64 translator is keyed by its IPv4 address, which its
/// packets (from `64:ff9b::a.b.c.d`) do not carry: its key in the filter would drop
/// nothing of it, and take the place of one that would.
#[test]
fn a_client_translated_by_nat64_is_not_counted_for_the_filter() {
    let conn = |peer: &str| {
        crate::Conn::new(
            tokio::io::empty(),
            std::net::SocketAddr::new(peer.parse().unwrap(), 1),
            "[::1]:80".parse().unwrap(),
        )
    };
    assert!(!super::sent_by_its_peer(&conn("64:ff9b::192.0.2.1")));
    assert!(super::sent_by_its_peer(&conn("2001:db8::1")));
    assert!(super::sent_by_its_peer(&conn("192.0.2.1")));
    // Its key is the IPv4 one, dropped only from an IPv4 header.
    let keying = PeerKeying::default();
    let program = drop_keys(&keys(&keying, &["64:ff9b::192.0.2.1"]));
    assert!(dropped(&program, "192.0.2.1"));
    assert!(!dropped(&program, "64:ff9b::192.0.2.1"));
}

#[test]
fn an_ipv4_peer_on_a_dual_stack_socket_is_read_from_its_ipv4_header() {
    let keying = PeerKeying::default();
    let program = drop_keys(&keys(&keying, &["::ffff:192.0.2.1"]));
    assert!(dropped(&program, "192.0.2.1"));
    assert!(dropped(&program, "::ffff:192.0.2.1"));
    assert!(!dropped(&program, "192.0.2.2"));
    // The same bits in an IPv6 header are another peer.
    assert!(!dropped(&program, "::c000:201"));
}

#[test]
fn an_ipv6_key_drops_its_whole_64_and_nothing_else() {
    let keying = PeerKeying::default();
    let program = drop_keys(&keys(&keying, &["2001:db8:1:2::1"]));
    assert!(dropped(&program, "2001:db8:1:2::9"));
    assert!(dropped(&program, "2001:db8:1:2:ffff:ffff:ffff:ffff"));
    assert!(!dropped(&program, "2001:db8:1:3::1"));
    assert!(!dropped(&program, "2001:db8:2:2::1"));
    assert!(!dropped(&program, "::1"));
    // Its first word, as an IPv4 address, is not it.
    assert!(!dropped(&program, "32.1.13.184"));
}

#[test]
fn every_prefix_length_masks_as_the_keying_does() {
    for (ipv4, ipv6) in [(24, 48), (20, 56), (32, 128), (8, 33), (0, 0), (31, 96)] {
        let keying = PeerKeying::with_prefixes(ipv4, ipv6).unwrap();
        let banned = keys(&keying, &["192.0.2.77", "2001:db8:aaaa:bbbb:cccc::1"]);
        let program = drop_keys(&banned);
        for source in [
            "192.0.2.1",
            "192.0.3.77",
            "192.0.2.77",
            "10.0.0.1",
            "2001:db8:aaaa:bbbb:cccc::2",
            "2001:db8:aaaa:bbbb:dddd::1",
            "2001:db8:aaaa:bbbc::1",
            "2001:db8:aaab::1",
            "2001:db9::1",
            "::1",
        ] {
            let key = keying.key(source.parse().unwrap());
            assert_eq!(
                dropped(&program, source),
                banned.contains(&key),
                "/{ipv4} /{ipv6}: {source}"
            );
        }
    }
}

#[test]
fn a_packet_of_another_version_is_kept() {
    let keying = PeerKeying::with_prefixes(0, 0).unwrap();
    let program = drop_keys(&keys(&keying, &["192.0.2.1", "2001:db8::1"]));
    let mut packet = ipv4_packet(Ipv4Addr::new(192, 0, 2, 1));
    packet[0] = 0x55;
    assert_eq!(run(&program, &packet).0, KEEP);
}

#[test]
fn keys_sharing_their_first_word_are_checked_in_chunks() {
    // 300 /64s of one /32: no search can split them, every chunk is reached.
    let keying = PeerKeying::default();
    let banned: Vec<PeerKey> = (0..300_u128)
        .map(|n| {
            keying.key(IpAddr::V6(Ipv6Addr::from_bits(
                (0x2001_0db8 << 96) | (n << 64),
            )))
        })
        .collect();
    let program = drop_keys(&banned);
    assert!(program.len() <= MAX_INSTRUCTIONS);
    assert!(dropped(&program, "2001:db8:0:0::1"));
    assert!(dropped(&program, "2001:db8:0:12b::1"), "the last one");
    assert!(!dropped(&program, "2001:db8:0:12c::1"));
}

#[test]
fn a_thousand_ipv4_keys_cost_a_packet_a_few_dozen_instructions() {
    let keying = PeerKeying::default();
    let banned: Vec<PeerKey> = (0..1000_u32)
        .map(|n| keying.key(IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + n * 7919))))
        .collect();
    let program = drop_keys(&banned);
    assert!(program.len() < 2000, "{}", program.len());
    let (verdict, steps) = run(&program, &ipv4_packet(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(verdict, KEEP);
    assert!(steps < 50, "{steps}");
    let (verdict, steps) = run(
        &program,
        &ipv4_packet(Ipv4Addr::from_bits(0x0a00_0000 + 999 * 7919)),
    );
    assert_eq!(verdict, DROP);
    assert!(steps < 50, "{steps}");
}

#[test]
fn keys_beyond_the_budget_are_left_out_last_first() {
    let keying = PeerKeying::with_prefixes(32, 128).unwrap();
    let banned: Vec<PeerKey> = (0..2000_u128)
        .map(|n| {
            keying.key(IpAddr::V6(Ipv6Addr::from_bits(
                n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
            )))
        })
        .collect();
    let (program, count) = drop_keys_within(&banned, MAX_INSTRUCTIONS);
    assert!(program.len() <= MAX_INSTRUCTIONS);
    assert!(count > 300 && count < 2000, "{count}");
    assert_eq!(program, drop_keys(&banned[..count]));
}

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|bits| IpAddr::V4(Ipv4Addr::from_bits(bits))),
        // Few distinct first words, so that keys share them.
        (0..4_u128, any::<u128>()).prop_map(|(top, rest)| {
            IpAddr::V6(Ipv6Addr::from_bits((0x2001_0db8 + top) << 96 | rest >> 32))
        }),
        any::<u32>().prop_map(|bits| IpAddr::V6(Ipv4Addr::from_bits(bits).to_ipv6_mapped())),
    ]
}

proptest! {
    #[test]
    fn drops_exactly_the_packets_of_its_keys(
        (ipv4, ipv6) in (0..=32_u8, 0..=128_u8),
        banned in vec(address(), 0..200),
        others in vec(address(), 0..50),
    ) {
        let keying = PeerKeying::with_prefixes(ipv4, ipv6).unwrap();
        let keys: Vec<PeerKey> = banned.iter().map(|ip| keying.key(*ip)).collect();
        let program = drop_keys(&keys);
        prop_assert!(program.len() <= MAX_INSTRUCTIONS);
        for source in banned.iter().chain(&others) {
            let verdict = run(&program, &packet_from(*source)).0;
            prop_assert_eq!(verdict == DROP, keys.contains(&keying.key(*source)), "{}", source);
        }
    }
}

#[test]
fn stats_print_on_one_line() {
    let stats = KernelBansStats {
        keys: 12,
        instructions: 40,
        sockets: 1,
        rebuilds: 3,
        last_rebuild_nanos: 85_000,
        attach_failures: 0,
    };
    assert_eq!(
        stats.to_string(),
        "12 keys in 40 instructions on 1 listener(s), rebuilt 3 times (last 85µs), 0 attach failures"
    );
}

/// `login`'s kernel filter on a loopback listener, kept by no task: the test calls
/// `refresh` itself. The listener must outlive the test's refreshes.
fn unattended_filter(login: &Login) -> (KernelBans, Arc<std::net::TcpListener>) {
    let kernel = login.bans().kernel_filter();
    let listener = Arc::new(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let weak: Weak<dyn AsFd + Send + Sync> = Arc::downgrade(&listener) as _;
    kernel.state.sockets.lock().unwrap().listeners.push(weak);
    (kernel, listener)
}

#[tokio::test(start_paused = true)]
async fn refusals_under_an_ended_ban_do_not_count_toward_the_next() {
    let login = Login::builder().build().unwrap();
    let (kernel, _listener) = unattended_filter(&login);
    kernel.set_user_space_refusals(NonZeroU32::new(3).unwrap());
    let peer: IpAddr = "192.0.2.7".parse().unwrap();
    let key = PeerKeying::default().key(peer);
    let ban = Duration::from_secs(10);
    login.bans().ban(peer, ban).unwrap();
    for _ in 0..2 {
        kernel.state.refused(&key, ban);
    }
    // The ban ends, and the peer is banned again before a refresh forgot its count.
    tokio::time::advance(ban + Duration::from_secs(1)).await;
    login.bans().ban(peer, ban).unwrap();
    kernel.state.refused(&key, ban);
    kernel.state.refresh(&kernel.table);
    assert_eq!(kernel.stats().keys, 0, "in the filter at its first refusal");
    // Its own third refusal puts it in.
    for _ in 0..2 {
        kernel.state.refused(&key, ban);
    }
    kernel.state.refresh(&kernel.table);
    assert_eq!(kernel.stats().keys, 1);
}

#[tokio::test(start_paused = true)]
async fn a_filter_too_small_for_every_key_is_rebuilt_only_when_its_keys_change() {
    // IPv6 keyed by /128: a key takes 4 words, and 1024 of them do not fit in the
    // kernel's 4096 instructions.
    let keying = PeerKeying::with_prefixes(32, 128).unwrap();
    let login = Login::builder().keying(keying.clone()).build().unwrap();
    let (kernel, _listener) = unattended_filter(&login);
    let ban = Duration::from_secs(600);
    let keys: Vec<PeerKey> = (0..1024_u128)
        .map(|n| {
            let ip = IpAddr::V6(Ipv6Addr::from_bits(
                (0x2001_0db8 << 96) | (n * 7919) << 32 | 1,
            ));
            login.bans().ban(ip, ban).unwrap();
            assert!(kernel.move_to_kernel(ip));
            keying.key(ip)
        })
        .collect();
    let refresh = || {
        kernel.state.refresh(&kernel.table);
        kernel.stats()
    };
    let built = refresh();
    assert!(0 < built.keys && built.keys < 1024, "{built}");
    assert_eq!(built.rebuilds, 1);

    // A second later, nothing has changed.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(refresh().rebuilds, 1, "rebuilt with nothing changed");
    // Keys left out are refused on in user space, which reorders them among
    // themselves; none outranks a key in the filter (10 refusals, counted double).
    let in_filter = |key: &PeerKey| kernel.state.filter.lock().unwrap().refused[key].in_filter;
    let left_out: Vec<PeerKey> = keys.into_iter().filter(|key| !in_filter(key)).collect();
    for (n, key) in left_out.iter().enumerate().take(5) {
        for _ in 0..n {
            kernel.state.refused(key, ban);
        }
    }
    assert_eq!(
        refresh().rebuilds,
        1,
        "rebuilt for a new order of the keys left out"
    );
    // One refused more often than that takes a place in the filter.
    for _ in 0..11 {
        kernel.state.refused(&left_out[0], ban);
    }
    assert_eq!(refresh().rebuilds, 2);
    assert!(in_filter(&left_out[0]));
}
