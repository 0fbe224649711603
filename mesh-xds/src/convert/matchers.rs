//! Request matchers: header, query-parameter and string matchers ↔ mesh-core's.

use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use mesh_core::{HeaderMatcher, QueryParamMatcher, StringMatch};

use super::ConvertError;

pub(crate) fn regex(r: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher {
        regex: r.to_string(),
        engine_type: None,
    }
}

pub(crate) fn string_match_from(s: &matcher::StringMatcher) -> Result<StringMatch, ConvertError> {
    use matcher::string_matcher::MatchPattern as M;
    Ok(match &s.match_pattern {
        Some(M::Exact(v)) => StringMatch::Exact(v.clone()),
        Some(M::Prefix(v)) => StringMatch::Prefix(v.clone()),
        Some(M::Suffix(v)) => StringMatch::Suffix(v.clone()),
        Some(M::Contains(v)) => StringMatch::Contains(v.clone()),
        Some(M::SafeRegex(r)) => StringMatch::Regex(r.regex.clone()),
        Some(M::Custom(_)) => {
            return Err(ConvertError::unsupported("string_match", "custom matchers"))
        }
        None => return Err(ConvertError::new("string_match", "missing pattern")),
    })
}

/// `None` for `Present`, which has no `StringMatcher` form.
pub(crate) fn string_match_to(
    s: &StringMatch,
    ignore_case: bool,
) -> Option<matcher::StringMatcher> {
    use matcher::string_matcher::MatchPattern as M;
    let pattern = match s {
        StringMatch::Exact(v) => M::Exact(v.clone()),
        StringMatch::Prefix(v) => M::Prefix(v.clone()),
        StringMatch::Suffix(v) => M::Suffix(v.clone()),
        StringMatch::Contains(v) => M::Contains(v.clone()),
        StringMatch::Regex(r) => M::SafeRegex(regex(r)),
        StringMatch::Present(_) => return None,
    };
    Some(matcher::StringMatcher {
        ignore_case,
        match_pattern: Some(pattern),
    })
}

#[allow(deprecated)] // the deprecated specifiers are still what many control planes send
pub(crate) fn header_from(h: &rpb::HeaderMatcher) -> Result<HeaderMatcher, ConvertError> {
    use rpb::header_matcher::HeaderMatchSpecifier as H;
    let mut ignore_case = false;
    let value = match &h.header_match_specifier {
        Some(H::ExactMatch(v)) => StringMatch::Exact(v.clone()),
        Some(H::PrefixMatch(v)) => StringMatch::Prefix(v.clone()),
        Some(H::SuffixMatch(v)) => StringMatch::Suffix(v.clone()),
        Some(H::ContainsMatch(v)) => StringMatch::Contains(v.clone()),
        Some(H::SafeRegexMatch(r)) => StringMatch::Regex(r.regex.clone()),
        Some(H::PresentMatch(b)) => StringMatch::Present(*b),
        Some(H::StringMatch(s)) => {
            ignore_case = s.ignore_case;
            string_match_from(s)?
        }
        Some(H::RangeMatch(_)) => {
            return Err(ConvertError::unsupported("range_match", "range matching"))
        }
        // Envoy: no specifier means "the header is present".
        None => StringMatch::Present(true),
    };
    Ok(HeaderMatcher {
        name: h.name.clone(),
        value,
        ignore_case,
        invert: h.invert_match,
        treat_missing_header_as_empty: h.treat_missing_header_as_empty,
    })
}

pub(crate) fn header_to(h: &HeaderMatcher) -> rpb::HeaderMatcher {
    use rpb::header_matcher::HeaderMatchSpecifier as H;
    let spec = match (&h.value, string_match_to(&h.value, h.ignore_case)) {
        (StringMatch::Present(b), _) => H::PresentMatch(*b),
        (_, Some(s)) => H::StringMatch(s),
        (_, None) => H::PresentMatch(true),
    };
    rpb::HeaderMatcher {
        name: h.name.clone(),
        invert_match: h.invert,
        treat_missing_header_as_empty: h.treat_missing_header_as_empty,
        header_match_specifier: Some(spec),
    }
}

pub(crate) fn query_from(
    q: &rpb::QueryParameterMatcher,
) -> Result<QueryParamMatcher, ConvertError> {
    use rpb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    let (value, ignore_case) = match &q.query_parameter_match_specifier {
        Some(Q::StringMatch(s)) => (string_match_from(s)?, s.ignore_case),
        Some(Q::PresentMatch(b)) => (StringMatch::Present(*b), false),
        None => (StringMatch::Present(true), false),
    };
    Ok(QueryParamMatcher {
        name: q.name.clone(),
        value,
        ignore_case,
    })
}

pub(crate) fn query_to(q: &QueryParamMatcher) -> rpb::QueryParameterMatcher {
    use rpb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    let spec = match (&q.value, string_match_to(&q.value, q.ignore_case)) {
        (StringMatch::Present(b), _) => Q::PresentMatch(*b),
        (_, Some(s)) => Q::StringMatch(s),
        (_, None) => Q::PresentMatch(true),
    };
    rpb::QueryParameterMatcher {
        name: q.name.clone(),
        query_parameter_match_specifier: Some(spec),
    }
}
