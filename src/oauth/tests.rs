//! Unit tests of OAuth signing and verification: RFC 5849 / OAuth Core 1.0 vectors and the
//! server's verification quirks.
use super::*;

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// RFC 5849 §3.4.1.1 example (duplicate names, `+`, encoded `=`, empty values).
#[test]
fn rfc5849_base_string() {
    let url = "http://EXAMPLE.COM:80/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b";
    let (base_url, query) = split_url(url);
    assert_eq!(base_url, "http://example.com/request");
    let mut all = parse_pairs(query, &['&']);
    all.extend(parse_pairs("c2&a3=2+q", &['&']));
    all.extend(pairs(&[
        ("oauth_consumer_key", "9djdj82h48djs9d2"),
        ("oauth_token", "kkk9d7dh3k39sjv7"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "137131201"),
        ("oauth_nonce", "7d8f3e4a"),
        ("oauth_signature", "ignored"),
    ]));
    assert_eq!(
        signature_base_string("post", &base_url, &all),
        "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q\
         %26a3%3Da%26b5%3D%253D%25253D%26c%2540%3D%26c2%3D%26oauth_consumer_\
         key%3D9djdj82h48djs9d2%26oauth_nonce%3D7d8f3e4a%26oauth_signature_m\
         ethod%3DHMAC-SHA1%26oauth_timestamp%3D137131201%26oauth_token%3Dkkk\
         9d7dh3k39sjv7"
    );
}

/// OAuth Core 1.0 Appendix A.5 (photos.example.net), the classic HMAC-SHA1 vector.
#[test]
fn oauth_core_appendix_a_signature() {
    let params = pairs(&[
        ("file", "vacation.jpg"),
        ("size", "original"),
        ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
        ("oauth_token", "nnch734d00sl2jdk"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "1191242096"),
        ("oauth_nonce", "kllo9940pd9333jh"),
        ("oauth_version", "1.0"),
    ]);
    let base = signature_base_string("GET", "http://photos.example.net/photos", &params);
    assert_eq!(
        base,
        "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacation.jpg%26\
         oauth_consumer_key%3Ddpf43f3p2l4k3l03%26oauth_nonce%3Dkllo9940pd9333jh%26\
         oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D1191242096%26\
         oauth_token%3Dnnch734d00sl2jdk%26oauth_version%3D1.0%26size%3Doriginal"
    );
    assert_eq!(
        hmac_sha1(&base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00"),
        "tR3+Ty81lMeYAr/Fid0kMTYa/WM="
    );
}

#[test]
fn normalises_urls() {
    assert_eq!(
        normalized_url("HTTPS://Host.Example:443"),
        "https://host.example/"
    );
    assert_eq!(normalized_url("http://h:4567/a/b?x=1"), "http://h:4567/a/b");
    assert_eq!(normalized_url("http://[::1]:80/p"), "http://[::1]/p");
    assert_eq!(
        normalized_url("https://[::1]:8443/p"),
        "https://[::1]:8443/p"
    );
}

fn lookup(key: &str) -> Option<String> {
    (key == "I1").then(|| "S3cr3t".to_string())
}

#[test]
fn header_signature_verifies_and_tampering_fails() {
    let url = "http://127.0.0.1:4567/params/2/I1";
    let form = pairs(&[("audrey_data", "|ipaddress&MTAuMC4wLjU=|")]);
    let header = authorization_header("PUT", url, &form, "I1", "S3cr3t");
    let req = Incoming {
        method: "PUT",
        url,
        authorization: Some(&header),
        form: &form,
    };
    assert_eq!(verify(&req, lookup), Verdict::Ok);
    let other = pairs(&[("audrey_data", "|ipaddress&MTAuMC4wLjY=|")]);
    let tampered = Incoming {
        form: &other,
        ..req
    };
    assert_eq!(verify(&tampered, lookup), Verdict::BadSignature);
    let moved = Incoming {
        url: "http://localhost:4567/params/2/I1",
        ..req
    };
    assert_eq!(verify(&moved, lookup), Verdict::BadSignature);
    let wrong = authorization_header("PUT", url, &form, "I1", "nope");
    let wrong = Incoming {
        authorization: Some(&wrong),
        ..req
    };
    assert_eq!(verify(&wrong, lookup), Verdict::BadSignature);
}

#[test]
fn legacy_client_signing_without_body_verifies() {
    let url = "http://h/params/2/I1";
    let header = authorization_header("PUT", url, &[], "I1", "S3cr3t");
    let form = pairs(&[("audrey_data", "|&|")]);
    let req = Incoming {
        method: "PUT",
        url,
        authorization: Some(&header),
        form: &form,
    };
    assert_eq!(verify(&req, lookup), Verdict::Ok);
}

#[test]
fn query_and_body_placement_verify() {
    let base = "http://h:1/configs/2/I1";
    let params = fresh_params("GET", base, &[], "I1", "S3cr3t");
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    let url = format!("{base}?{}", query.join("&"));
    let req = Incoming {
        method: "GET",
        url: &url,
        authorization: None,
        form: &[],
    };
    assert_eq!(verify(&req, lookup), Verdict::Ok);

    let mut form = pairs(&[("audrey_data", "|&|")]);
    form.extend(fresh_params("PUT", base, &form, "I1", "S3cr3t"));
    let req = Incoming {
        method: "PUT",
        url: base,
        authorization: None,
        form: &form,
    };
    assert_eq!(verify(&req, lookup), Verdict::Ok);
}

#[test]
fn unknown_consumer_verifies_with_empty_secret() {
    let url = "http://h/auth";
    let header = authorization_header("GET", url, &[], "stranger", "");
    let req = Incoming {
        method: "GET",
        url,
        authorization: Some(&header),
        form: &[],
    };
    assert_eq!(verify(&req, lookup), Verdict::Ok);
}

#[test]
fn missing_or_malformed_oauth_is_no_oauth() {
    let req = Incoming {
        method: "GET",
        url: "http://h/auth",
        authorization: None,
        form: &[],
    };
    assert_eq!(verify(&req, lookup), Verdict::NoOAuth);
    let bad = Incoming {
        authorization: Some("OAuth oauth_nonce"),
        ..req
    };
    assert_eq!(verify(&bad, lookup), Verdict::NoOAuth);
    let rsa = Incoming {
        authorization: Some("OAuth oauth_signature_method=\"RSA-SHA1\", oauth_signature=\"x\", oauth_consumer_key=\"I1\""),
        ..req
    };
    assert_eq!(verify(&rsa, lookup), Verdict::NoOAuth);
    let basic = Incoming {
        authorization: Some("Basic Zm9vOmJhcg=="),
        ..req
    };
    assert_eq!(verify(&basic, lookup), Verdict::NoOAuth);
}

#[test]
fn plaintext_signature() {
    let header = "OAuth oauth_consumer_key=\"I1\", oauth_signature_method=\"PLAINTEXT\", oauth_signature=\"S3cr3t%26\"";
    let req = Incoming {
        method: "GET",
        url: "http://h/auth",
        authorization: Some(header),
        form: &[],
    };
    assert_eq!(verify(&req, lookup), Verdict::Ok);
}

#[test]
fn header_parsing_follows_the_gem() {
    let parsed = parse_authorization_header(
        "OAuth realm=\"x\", oauth_consumer_key=\"a%20b\",oauth_nonce=\"n+1\"",
    );
    assert_eq!(
        parsed,
        Ok(Some(pairs(&[
            ("oauth_consumer_key", "a b"),
            ("oauth_nonce", "n+1")
        ])))
    );
    assert_eq!(parse_authorization_header("oauth x=\"y\""), Ok(None));
    assert_eq!(
        parse_authorization_header("OAuth a=\"b\", c"),
        Err(MalformedHeader)
    );
}

#[test]
fn lenient_base64_like_ruby() {
    assert_eq!(ruby_decode64("MTAuMC4wLjU="), b"10.0.0.5");
    assert_eq!(ruby_decode64("MTAu\nMC4w LjU="), b"10.0.0.5");
    assert_eq!(ruby_decode64("MA=="), b"0");
    assert_eq!(ruby_decode64("MA"), b"0");
    assert_eq!(ruby_decode64("M"), b"");
    assert_eq!(ruby_decode64("!!"), b"");
    assert_eq!(ruby_decode64("YWJj=ZGVm"), b"abcdef");
}
