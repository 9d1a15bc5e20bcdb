//! Who reports logins over HTTP in a test: a `ReportLoginLayer` around the application,
//! or the adapter itself (`HttpServiceBuilder::report_logins`). The tests of login
//! reports run both ways.

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::{Layer, Service, util::BoxCloneService};
use tower_bouncer::{
    BoxError, Conn,
    http::HttpService,
    login::{ClassifyLogin, ReportLoginLayer},
};

/// A connection-level service, boxed: the two ways make different types.
pub type Boxed<IO> = BoxCloneService<Conn<IO>, (), BoxError>;

#[derive(Debug, Clone, Copy)]
pub enum Reporter {
    Layer,
    Adapter,
}

impl Reporter {
    pub const ALL: [Reporter; 2] = [Reporter::Layer, Reporter::Adapter];

    /// The adapter serving `app`, its logins reported as `classify` tells them.
    pub fn http<IO, S, B, C>(self, app: S, classify: C) -> Boxed<IO>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        C: ClassifyLogin + Send + Sync + 'static,
    {
        match self {
            Reporter::Layer => BoxCloneService::new(HttpService::new(
                ReportLoginLayer::new().classify_with(classify).layer(app),
            )),
            Reporter::Adapter => BoxCloneService::new(
                HttpService::builder(app)
                    .report_logins(classify)
                    .build()
                    .unwrap(),
            ),
        }
    }
}
