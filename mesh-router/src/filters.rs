//! The registry of extra per-route layers: a route names filters (`Route.filters`), and the
//! router builds each from the factory registered under that name when the table is compiled.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use http::{Request, Response};
use mesh_core::{Body, BoxError, FilterConfig};
use tower::util::BoxCloneService;
use tower::{Layer, Service};

use crate::fault::FaultLayer;

/// The service type per-route layers wrap: the inner service under the route's policy.
pub type HttpService = BoxCloneService<Request<Body>, Response<Body>, BoxError>;

/// A type-erased per-route layer, built once per route at reload.
#[derive(Clone)]
pub struct RouteLayer(Arc<dyn Fn(HttpService) -> HttpService + Send + Sync>);

impl RouteLayer {
    /// Erases any tower layer over [`HttpService`].
    pub fn new<L>(layer: L) -> Self
    where
        L: Layer<HttpService> + Send + Sync + 'static,
        L::Service: Service<Request<Body>, Response = Response<Body>, Error = BoxError>
            + Clone
            + Send
            + 'static,
        <L::Service as Service<Request<Body>>>::Future: Send + 'static,
    {
        Self(Arc::new(move |inner| {
            BoxCloneService::new(layer.layer(inner))
        }))
    }

    /// Wraps `inner`.
    pub fn apply(&self, inner: HttpService) -> HttpService {
        (self.0)(inner)
    }

    /// Wraps `inner` in a chain of layers listed outermost first (the order config lists
    /// filters in, per route and per listener alike): the first layer sees the request first.
    pub fn apply_all(layers: &[RouteLayer], inner: HttpService) -> HttpService {
        layers
            .iter()
            .rev()
            .fold(inner, |svc, layer| layer.apply(svc))
    }
}

impl fmt::Debug for RouteLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RouteLayer(..)")
    }
}

/// Builds a route's layer from its filter config; an `Err` refuses the route table.
pub trait LayerFactory: Send + Sync {
    /// Builds the layer, or says why `config` is not acceptable.
    fn build(&self, config: &FilterConfig) -> Result<RouteLayer, String>;
}

impl<F> LayerFactory for F
where
    F: Fn(&FilterConfig) -> Result<RouteLayer, String> + Send + Sync,
{
    fn build(&self, config: &FilterConfig) -> Result<RouteLayer, String> {
        self(config)
    }
}

/// Layer factories by name. [`LayerRegistry::default`] holds `fault`.
///
/// ```
/// use mesh_router::{LayerRegistry, RouteLayer};
/// use mesh_core::FilterConfig;
///
/// let mut registry = LayerRegistry::default();
/// registry.register("noop", |config: &FilterConfig| match config {
///     FilterConfig::Custom { .. } => Ok(RouteLayer::new(tower::layer::util::Identity::new())),
///     _ => Err("noop takes a custom config".to_string()),
/// });
/// assert!(registry.names().any(|n| n == "noop"));
/// ```
#[derive(Clone)]
pub struct LayerRegistry {
    factories: BTreeMap<String, Arc<dyn LayerFactory>>,
}

impl LayerRegistry {
    /// A registry with no factory at all (routes naming filters are refused).
    pub fn empty() -> Self {
        Self {
            factories: BTreeMap::new(),
        }
    }

    /// Registers (or replaces) the factory for `name`.
    pub fn register(
        &mut self,
        name: impl Into<String>,
        factory: impl LayerFactory + 'static,
    ) -> &mut Self {
        self.factories.insert(name.into(), Arc::new(factory));
        self
    }

    /// The registered names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Whether a factory is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// Builds the layer `config` names, or `None` for an optional filter with no factory here
    /// (xDS `is_optional`: a proxy skips what it does not have, instead of refusing the config).
    pub fn build_optional(&self, config: &FilterConfig) -> Result<Option<RouteLayer>, String> {
        if config.is_optional() && !self.contains(config.name()) {
            return Ok(None);
        }
        self.build(config).map(Some)
    }

    /// Builds the layers of a filter chain, in order, skipping optional filters with no
    /// factory; an error carries the index of the refused filter.
    pub fn build_all(&self, configs: &[FilterConfig]) -> Result<Vec<RouteLayer>, (usize, String)> {
        let mut layers = Vec::with_capacity(configs.len());
        for (i, f) in configs.iter().enumerate() {
            layers.extend(self.build_optional(f).map_err(|why| (i, why))?);
        }
        Ok(layers)
    }

    /// Builds the layer `config` names.
    pub fn build(&self, config: &FilterConfig) -> Result<RouteLayer, String> {
        let name = config.name();
        let factory = self.factories.get(name).ok_or_else(|| {
            format!(
                "unknown filter {name:?} (registered: {})",
                self.names().collect::<Vec<_>>().join(", ")
            )
        })?;
        factory.build(config)
    }
}

impl Default for LayerRegistry {
    fn default() -> Self {
        let mut r = Self::empty();
        r.register("fault", |config: &FilterConfig| match config {
            FilterConfig::Fault(f) => Ok(RouteLayer::new(FaultLayer::new(f.clone()))),
            FilterConfig::Custom { .. } => {
                Err("the fault filter takes a `fault:` config".to_string())
            }
        });
        r
    }
}

impl fmt::Debug for LayerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
