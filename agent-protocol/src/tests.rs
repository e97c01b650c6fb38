use std::io::Cursor;

use super::*;

fn spec() -> RunSpec {
    RunSpec {
        rootfs: Rootfs::Unpack {
            disk: "rootfs".into(),
            layers: vec![Layer {
                disk: "layers".into(),
                offset: 4096,
                size: 1234,
                compression: Compression::Gzip,
                digest: "sha256:00".into(),
            }],
        },
        scratch_disk: "scratch".into(),
        process: Process {
            args: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: "1000:1000".into(),
            terminal: false,
            stdin: true,
            rows: 24,
            cols: 80,
            security: Security {
                capabilities: vec![0, 1, 21],
                no_new_privileges: true,
                seccomp: vec![vec![
                    BpfInsn(0x20, 0, 0, 4),
                    BpfInsn(0x06, 0, 0, 0x7fff_0000),
                ]],
                rlimits: vec![Rlimit {
                    resource: 7,
                    soft: 1 << 20,
                    hard: u64::MAX,
                }],
                groups: vec!["audio".into(), "1234".into()],
            },
        },
        hostname: "c1".into(),
        read_only: false,
        max_layer_bytes: 1 << 30,
        max_layer_entries: 1 << 20,
        network: Network {
            interfaces: vec![Interface {
                mac: "02:42:0a:58:00:02".into(),
                address: std::net::Ipv4Addr::new(10, 88, 0, 2),
                prefix: 16,
                gateway: Some(std::net::Ipv4Addr::new(10, 88, 0, 1)),
                mtu: 1500,
            }],
            dns: vec!["10.88.0.1".into()],
            dns_search: vec!["example.com".into()],
            dns_options: vec!["ndots:2".into()],
            hosts: vec![HostEntry {
                address: "192.0.2.1".into(),
                names: vec!["db".into()],
            }],
        },
        mounts: vec![
            Mount {
                target: "/data".into(),
                read_only: true,
                source: MountSource::Virtiofs {
                    tag: "vmfs0".into(),
                    copy_up: false,
                },
            },
            Mount {
                target: "/run".into(),
                read_only: false,
                source: MountSource::Tmpfs {
                    size: 1 << 20,
                    mode: Some(0o1777),
                    exec: false,
                },
            },
        ],
        options: ContainerOptions {
            init: true,
            privileged: false,
            sysctls: vec![("kernel.shmmax".into(), "1000000".into())],
            shm_size: 1 << 27,
            pids_limit: Some(100),
        },
        seed: vec![7; 64],
        host_time_ns: 1_700_000_000_000_000_000,
        timings: true,
    }
}

#[test]
fn older_specs_get_the_default_security() {
    let mut v = serde_json::to_value(spec().process).expect("json");
    v.as_object_mut().expect("object").remove("security");
    let p: Process = serde_json::from_value(v).expect("parse");
    assert_eq!(p.security, Security::default());
    assert_eq!(p.security.capabilities, DEFAULT_CAPABILITIES);
}

#[test]
fn frames_round_trip() {
    let mut buf = Vec::new();
    let msgs = [
        HostMessage::Run(Box::new(spec())),
        HostMessage::Signal(15),
        HostMessage::Resize {
            rows: 50,
            cols: 132,
        },
        HostMessage::Continue,
        HostMessage::Forward {
            port: 1 << 30,
            address: std::net::Ipv4Addr::new(10, 0, 2, 15),
            target: 80,
            token: "ab".into(),
        },
    ];
    for m in &msgs {
        write_frame(&mut buf, m).expect("write");
    }
    let mut r = Cursor::new(buf);
    for m in &msgs {
        let got: HostMessage = read_frame(&mut r).expect("read").expect("a frame");
        assert_eq!(&got, m);
    }
    assert!(read_frame::<_, HostMessage>(&mut r).expect("eof").is_none());

    let timings = AgentMessage::Timings {
        marks: vec![("hello".into(), 0.0), ("exited".into(), 12.5)],
    };
    let mut buf = Vec::new();
    write_frame(&mut buf, &timings).expect("write");
    let got: AgentMessage = read_frame(&mut Cursor::new(buf))
        .expect("read")
        .expect("a frame");
    assert_eq!(got, timings);
}

#[test]
fn oversized_frames_are_refused_before_reading_them() {
    let mut data = (u32::MAX).to_be_bytes().to_vec();
    data.extend_from_slice(b"{}");
    let err = read_frame::<_, AgentMessage>(&mut Cursor::new(data)).expect_err("too large");
    assert!(matches!(err, FrameError::TooLarge(_)), "{err}");
}

#[test]
fn malformed_and_truncated_frames_are_errors() {
    let mut data = 5u32.to_be_bytes().to_vec();
    data.extend_from_slice(b"{{{{{");
    let err = read_frame::<_, AgentMessage>(&mut Cursor::new(data)).expect_err("bad json");
    assert!(matches!(err, FrameError::Malformed(_)), "{err}");

    let mut data = 100u32.to_be_bytes().to_vec();
    data.extend_from_slice(b"{\"started\"");
    let err = read_frame::<_, AgentMessage>(&mut Cursor::new(data)).expect_err("short");
    assert!(matches!(err, FrameError::Truncated), "{err}");

    let err = read_frame::<_, AgentMessage>(&mut Cursor::new(vec![0u8, 0])).expect_err("short len");
    assert!(matches!(err, FrameError::Truncated), "{err}");

    // Valid JSON of the wrong shape.
    let mut buf = Vec::new();
    write_frame(&mut buf, &serde_json::json!({"exited": {"code": "x"}})).expect("write");
    assert!(read_frame::<_, AgentMessage>(&mut Cursor::new(buf)).is_err());
}
