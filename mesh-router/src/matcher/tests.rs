use super::*;
use http::HeaderValue;

fn header(value: StringMatch, ignore_case: bool, invert: bool) -> HeaderMatch {
    HeaderMatch::compile(&HeaderMatcher {
        name: "x-h".into(),
        value,
        ignore_case,
        invert,
        treat_missing_header_as_empty: false,
    })
    .unwrap()
}

fn headers(values: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append("x-h", HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn string_conditions_with_case_and_inversion() {
    let m = header(StringMatch::Suffix(".COM".into()), true, false);
    assert!(m.matches(&headers(&["a.example.com"])));
    let m = header(StringMatch::Contains("mid".into()), false, false);
    assert!(m.matches(&headers(&["amidst"])));
    assert!(!m.matches(&headers(&["aMIDst"])));
    let m = header(StringMatch::Regex("[a-z]+".into()), false, false);
    assert!(m.matches(&headers(&["abc"])));
    assert!(
        !m.matches(&headers(&["abc1"])),
        "the regex must match the whole value"
    );
    let absent = header(StringMatch::Present(false), false, false);
    assert!(absent.matches(&headers(&[])));
    assert!(!absent.matches(&headers(&["x"])));
    let not_exact = header(StringMatch::Exact("a".into()), false, true);
    assert!(not_exact.matches(&headers(&["b"])));
    assert!(
        !not_exact.matches(&headers(&[])),
        "inverted or not, a value condition fails on an absent header (as in Envoy)"
    );
    assert!(!not_exact.matches(&headers(&["a"])));
    let not_present = header(StringMatch::Present(true), false, true);
    assert!(not_present.matches(&headers(&[])), "presence inverts as is");
    assert!(!not_present.matches(&headers(&["x"])));
}

#[test]
fn treat_missing_header_as_empty_matches_an_absent_header_as_empty() {
    let compile = |value, invert| {
        HeaderMatch::compile(&HeaderMatcher {
            name: "x-h".into(),
            value,
            ignore_case: false,
            invert,
            treat_missing_header_as_empty: true,
        })
        .unwrap()
    };
    let not_dev = compile(StringMatch::Exact("dev".into()), true);
    assert!(not_dev.matches(&headers(&[])), "\"\" is not dev");
    assert!(!not_dev.matches(&headers(&["dev"])));
    let empty_re = compile(StringMatch::Regex("a*".into()), false);
    assert!(empty_re.matches(&headers(&[])));
    let present = compile(StringMatch::Present(true), false);
    assert!(!present.matches(&headers(&[])), "presence is not affected");
}

#[test]
fn repeated_headers_are_matched_joined_by_commas() {
    let m = header(StringMatch::Exact("a,b".into()), false, false);
    assert!(m.matches(&headers(&["a", "b"])));
    assert!(!m.matches(&headers(&["a"])));
}

#[test]
fn query_values_are_matched_as_sent_and_the_first_occurrence_counts() {
    let q = QueryMatch::compile(&QueryParamMatcher {
        name: "k".into(),
        value: StringMatch::Exact("v w".into()),
        ignore_case: false,
    })
    .unwrap();
    assert!(
        !q.matches(Some("a=1&k=v%20w")),
        "not percent-decoded, as in Envoy"
    );
    assert!(!q.matches(Some("k=v+w")));
    let q = QueryMatch::compile(&QueryParamMatcher {
        name: "k".into(),
        value: StringMatch::Exact("v%20w".into()),
        ignore_case: false,
    })
    .unwrap();
    assert!(q.matches(Some("a=1&k=v%20w&k=other")));
    assert!(
        !q.matches(Some("k=other&k=v%20w")),
        "the first occurrence counts"
    );
    assert!(!q.matches(None));
}

#[test]
fn regex_paths_are_anchored_and_ignore_case_sensitive() {
    let mut m = RouteMatch {
        path: PathMatch::Regex("/a/[0-9]+".into()),
        ..RouteMatch::default()
    };
    let c = RouteMatcher::compile(&m).unwrap();
    assert!(c.path_matches("/a/12"));
    assert!(!c.path_matches("/x/a/12"));
    assert!(!c.path_matches("/A/12"));
    m.case_sensitive = false;
    assert!(
        !RouteMatcher::compile(&m).unwrap().path_matches("/A/12"),
        "case_sensitive does not apply to regexes, as in Envoy"
    );
    m.path = PathMatch::Regex("(?i)/a/[0-9]+".into());
    assert!(RouteMatcher::compile(&m).unwrap().path_matches("/A/12"));
    m.path = PathMatch::Regex("(".into());
    let err = RouteMatcher::compile(&m).unwrap_err();
    assert_eq!(err.path, "regex");
}
