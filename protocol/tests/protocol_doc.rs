//! Checks the worked Hawk example in docs/protocol.md against the implementation,
//! so the document a client author follows cannot drift from the code.

use rossby_protocol::hawk::{Authorization, DeviceCredentials, ServiceName, SignedRequest};
use rossby_protocol::pb::Method;
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

const DOC: &str = include_str!("../../docs/protocol.md");

/// The `key: value` lines of the fenced block tagged `hawk-example`.
fn example() -> BTreeMap<String, String> {
    let start = DOC
        .find("```hawk-example")
        .expect("docs/protocol.md has a hawk-example block");
    let body = &DOC[start..];
    let body = &body[body.find('\n').expect("block body") + 1..];
    let body = &body[..body.find("```").expect("block end")];
    body.lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn the_documented_hawk_example_matches_the_implementation() {
    let ex = example();
    let get = |k: &str| {
        ex.get(k)
            .unwrap_or_else(|| panic!("example lacks {k}"))
            .clone()
    };
    let service: ServiceName = get("service").parse().unwrap();
    let method = Method::from_str_name(&get("rpc")).expect("rpc is a Method name");
    let body = hex::decode(get("body (hex)")).unwrap();
    let exporter = hex::decode(get("exporter (hex)")).unwrap();
    let key: [u8; 32] = hex::decode(get("key (hex)")).unwrap().try_into().unwrap();
    let creds = DeviceCredentials {
        id: get("credential id"),
        key,
    };
    let ts = UNIX_EPOCH + Duration::from_secs(get("ts").parse().unwrap());
    let request = SignedRequest {
        service: &service,
        method,
        body: &body,
        exporter: &exporter,
    };
    assert_eq!(get("path"), rossby_protocol::hawk::path(method));
    assert_eq!(get("ext"), hex::encode(&exporter));

    let header = request.sign(&creds, ts, &get("nonce")).unwrap();
    assert_eq!(
        header,
        get("authorization"),
        "the documented header is what the code produces"
    );
    let auth = Authorization::parse(&header).unwrap();
    assert_eq!(
        auth.verify(&request, &key, ts, Duration::from_secs(60)),
        Ok(())
    );
    assert!(header.contains(&format!("mac=\"{}\"", get("mac"))));
    assert!(header.contains(&format!("hash=\"{}\"", get("hash"))));
}
