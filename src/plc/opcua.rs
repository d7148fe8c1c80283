//! OPC UA server: the station as a vision system, the subset of OPC 40100 (Machine Vision) a
//! line's PLC or MES needs — its state, the last result, the recipes and choosing one — on a
//! thread of its own, listening only where the profile says (`[opcua] listen`).
//!
//! The address space (namespace `urn:ferroscope:<station>`), under Objects:
//!
//! ```text
//! VisionSystem
//! ├── VisionStateMachine
//! │   └── CurrentState      String: Preoperational, Initialized, ContinuousExecution, Halted, Error
//! ├── ResultManagement
//! │   ├── ItemsInspected, ItemsRejected     UInt32
//! │   └── LastResult
//! │       ├── InspectionId  UInt32 (the item line's `id`, Modbus input registers 0–1)
//! │       ├── ResultId      String "<station>-<inspection id>"
//! │       ├── IsPass        Boolean
//! │       ├── ResultCode    UInt16 (as Modbus input register 2)
//! │       ├── ClassName     String ("" when none)
//! │       ├── Score         Double
//! │       ├── CreationTime  DateTime (when it was decided)
//! │       └── Recipe        String
//! └── RecipeManagement
//!     ├── Recipes           String[] (by index: Modbus holding register 0's values)
//!     ├── ActiveRecipe      String
//!     └── SelectRecipe(Name: String) → Result: String
//! ```
//!
//! Guarantees:
//! - every value comes from the PLC table ([`super::PlcState`]): the server never waits for
//!   the frame loop. The state, counts and active recipe are read when a client reads them;
//!   the last result's eight variables are written together within [`RESULT_POLL_MS`] of
//!   each new item, so a client that reads them in one request gets one item's fields;
//! - no anonymous session unless the profile says `allow_anonymous = true`; users are names
//!   with passwords (`opcua.users`), accepted only on the Basic256Sha256 sign-and-encrypt
//!   endpoint, so a password never crosses the network in clear; the unsecured endpoint
//!   exists only for anonymous sessions where they are allowed;
//! - a client's certificate must be trusted: placed in `pki_dir/trusted/` (one the server
//!   refused lands in `pki_dir/rejected/`, to be moved after checking), or every one with
//!   `trust_client_certs = true`; the server's own certificate is made in `pki_dir` on the
//!   first start;
//! - `SelectRecipe` goes the way every product change goes ([`crate::station::recipes`]):
//!   loaded off the frame path, applied between two items; an unknown name is
//!   `BadInvalidArgument`, and a station without `[[recipes]]` answers `BadNotSupported`;
//! - the port is bound before the station starts: a port in use stops the start with an
//!   error naming the profile's field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use opcua::crypto::SecurityPolicy;
use opcua::server::address_space::{MethodBuilder, ObjectBuilder, Variable};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{simple_node_manager, SimpleNodeManager};
use opcua::server::{ServerBuilder, ServerEndpoint, ServerHandle, ServerUserToken, ANONYMOUS_USER_TOKEN_ID};
use opcua::types::{
    BuildInfo, DataTypeId, DataValue, DateTime, MessageSecurityMode, NodeId, ObjectId, QualifiedName, StatusCode,
    UAString, Variant,
};

use super::{PlcState, StationState};
use crate::hal::Clock;
use crate::records::RecipeCommands;

/// What the server shows and who may connect.
pub struct OpcuaSetup {
    /// Where to listen.
    pub listen: SocketAddr,
    /// User names and passwords.
    pub users: Vec<(String, String)>,
    /// Sessions without a user.
    pub allow_anonymous: bool,
    /// The server's certificate and the trusted client certificates.
    pub pki_dir: PathBuf,
    /// Trust every client certificate.
    pub trust_client_certs: bool,
    /// Station name.
    pub station: String,
    /// The station's class names (records' order).
    pub classes: Vec<String>,
    /// Recipe names by index.
    pub recipes: Vec<String>,
}

/// The running server; stopped when dropped.
pub struct OpcuaServer {
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl Drop for OpcuaServer {
    fn drop(&mut self) {
        self.handle.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The state machine's state as OPC 40100 names it.
fn state_name(state: &PlcState) -> &'static str {
    match state.state() {
        s if s == StationState::Starting as u8 => "Preoperational",
        s if s == StationState::Faulted as u8 => "Error",
        s if s == StationState::Stopped as u8 => "Halted",
        _ if !state.trigger_enabled() => "Initialized",
        _ => "ContinuousExecution",
    }
}

impl OpcuaServer {
    /// Bind `setup.listen` and serve `state` (and `recipes`, where the profile has them).
    pub fn start(
        setup: OpcuaSetup,
        state: Arc<PlcState>,
        recipes: Option<Arc<dyn RecipeCommands>>,
        field: &str,
    ) -> Result<OpcuaServer> {
        let std_listener = std::net::TcpListener::bind(setup.listen)
            .with_context(|| format!("{field}: cannot listen on {}", setup.listen))?;
        std_listener.set_nonblocking(true)?;
        let local_addr = std_listener.local_addr()?;
        std::fs::create_dir_all(&setup.pki_dir)
            .with_context(|| format!("{field}: cannot make the PKI folder {}", setup.pki_dir.display()))?;
        let ns_uri = format!("urn:ferroscope:{}", setup.station);
        let users: Vec<String> = setup.users.iter().map(|(u, _)| format!("user-{u}")).collect();
        let mut secure_tokens = users.clone();
        if setup.allow_anonymous {
            secure_tokens.push(ANONYMOUS_USER_TOKEN_ID.to_string());
        }
        let mut builder = ServerBuilder::new()
            .application_name(format!("ferroscope {}", setup.station))
            .application_uri(format!("urn:ferroscope:{}:server", setup.station))
            .product_uri("urn:ferroscope")
            .build_info(BuildInfo {
                product_uri: "urn:ferroscope".into(),
                manufacturer_name: "ferroscope".into(),
                product_name: "ferroscope vision station".into(),
                software_version: env!("CARGO_PKG_VERSION").into(),
                build_number: "0".into(),
                build_date: DateTime::now(),
            })
            .pki_dir(&setup.pki_dir)
            .create_sample_keypair(true)
            .certificate_path("own/cert.der")
            .private_key_path("private/private.pem")
            .trust_client_certs(setup.trust_client_certs)
            .host(local_addr.ip().to_string())
            .port(local_addr.port())
            .discovery_urls(vec!["/".to_owned()])
            .with_node_manager(simple_node_manager(
                NamespaceMetadata {
                    namespace_uri: ns_uri.clone(),
                    ..Default::default()
                },
                "ferroscope",
            ));
        for (u, p) in &setup.users {
            builder = builder.add_user_token(format!("user-{u}"), ServerUserToken::user_pass(u.as_str(), p.as_str()));
        }
        // Passwords only over the encrypted channel; the unsecured endpoint exists only for
        // anonymous sessions, where the profile allows them.
        builder = builder.add_endpoint(
            "basic256sha256_sign_encrypt",
            ServerEndpoint::new(
                "/",
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::SignAndEncrypt,
                &secure_tokens,
            ),
        );
        if setup.allow_anonymous {
            builder = builder
                .add_endpoint(
                    "none",
                    ServerEndpoint::new_none("/", &[ANONYMOUS_USER_TOKEN_ID.to_string()]),
                )
                .default_endpoint("none");
        } else {
            builder = builder.default_endpoint("basic256sha256_sign_encrypt");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("OPC UA server: cannot start its runtime")?;
        // The server's parts start their timers as they are made: inside its runtime.
        let entered = runtime.enter();
        let (server, handle) = builder.build().map_err(|e| anyhow!("{field}: OPC UA server: {e}"))?;
        let manager = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .ok_or_else(|| anyhow!("OPC UA server: no node manager"))?;
        let ns = handle
            .get_namespace_index(&ns_uri)
            .ok_or_else(|| anyhow!("OPC UA server: no namespace {ns_uri}"))?;
        let (state_for_results, setup_station, setup_classes, setup_recipes) = (
            state.clone(),
            setup.station.clone(),
            setup.classes.clone(),
            setup.recipes.clone(),
        );
        build_address_space(&manager, ns, &setup, state, recipes);
        drop(entered);
        let publisher = publish_results(
            manager.clone(),
            handle.subscriptions().clone(),
            ns,
            state_for_results,
            setup_station,
            setup_classes,
            setup_recipes,
        );
        let thread = std::thread::Builder::new().name("opcua".into()).spawn(move || {
            runtime.block_on(async move {
                tokio::spawn(publisher);
                match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => {
                        if let Err(e) = server.run_with(l).await {
                            eprintln!("OPC UA server stopped: {e}");
                        }
                    }
                    Err(e) => eprintln!("OPC UA server: {e}"),
                }
            });
        })?;
        Ok(OpcuaServer {
            handle,
            thread: Some(thread),
            local_addr,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// The last result's eight variables, written together (one write lock) whenever a new item
/// is decided: a client reading them in one request gets one item's fields.
async fn publish_results(
    manager: Arc<SimpleNodeManager>,
    subscriptions: Arc<opcua::server::SubscriptionCache>,
    ns: u16,
    state: Arc<PlcState>,
    station: String,
    classes: Vec<String>,
    recipes: Vec<String>,
) {
    let id = |s: &str| NodeId::new(ns, s.to_string());
    let nodes = [
        "InspectionId",
        "ResultId",
        "IsPass",
        "ResultCode",
        "ClassName",
        "Score",
        "CreationTime",
        "Recipe",
    ]
    .map(id);
    let mut shown: Option<u32> = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(RESULT_POLL_MS));
    loop {
        tick.tick().await;
        let Some(r) = state.last_result() else { continue };
        if shown == Some(r.item.id) {
            continue;
        }
        let l = r.item;
        // The station's clock to wall time: now, less how long ago it was decided.
        let ago_us = state.clock().now().us_since(r.at) as i64;
        let values: [Variant; 8] = [
            Variant::from(l.id),
            Variant::from(format!("{station}-{}", l.id)),
            Variant::from(l.code == super::result_code::ACCEPT),
            Variant::from(l.code),
            Variant::from(classes.get(l.class as usize).cloned().unwrap_or_default()),
            Variant::from(r.score as f64),
            Variant::from(DateTime::from(DateTime::now().ticks() - ago_us * 10)),
            Variant::from(recipes.get(l.recipe as usize).cloned().unwrap_or_default()),
        ];
        let updates = nodes.iter().zip(values).map(|(n, v)| (n, None, DataValue::new_now(v)));
        if manager.set_values(&subscriptions, updates).is_ok() {
            shown = Some(l.id);
        }
    }
}

/// How often the server looks for a new result, ms: a tenth of the fastest line's item period.
pub const RESULT_POLL_MS: u64 = 5;

fn build_address_space(
    manager: &Arc<SimpleNodeManager>,
    ns: u16,
    setup: &OpcuaSetup,
    state: Arc<PlcState>,
    recipes: Option<Arc<dyn RecipeCommands>>,
) {
    let id = |s: &str| NodeId::new(ns, s.to_string());
    // Browse names in the station's namespace, as OPC 40100 clients look them up.
    let qn = |s: &str| QualifiedName::new(ns, s);
    let vs = id("VisionSystem");
    let sm = id("VisionStateMachine");
    let rm = id("ResultManagement");
    let lr = id("LastResult");
    let rec = id("RecipeManagement");
    let select = id("SelectRecipe");
    {
        let space = manager.address_space();
        let mut space = space.write();
        ObjectBuilder::new(&vs, qn("VisionSystem"), "VisionSystem")
            .organized_by(ObjectId::ObjectsFolder)
            .insert(&mut *space);
        for (node, name, parent) in [
            (&sm, "VisionStateMachine", &vs),
            (&rm, "ResultManagement", &vs),
            (&lr, "LastResult", &rm),
            (&rec, "RecipeManagement", &vs),
        ] {
            ObjectBuilder::new(node, qn(name), name)
                .component_of(parent.clone())
                .insert(&mut *space);
        }
        let _ = space.add_variables(
            vec![Variable::new(
                &id("CurrentState"),
                qn("CurrentState"),
                "CurrentState",
                "",
            )],
            &sm,
        );
        let _ = space.add_variables(
            vec![
                Variable::new(&id("ItemsInspected"), qn("ItemsInspected"), "ItemsInspected", 0u32),
                Variable::new(&id("ItemsRejected"), qn("ItemsRejected"), "ItemsRejected", 0u32),
            ],
            &rm,
        );
        let _ = space.add_variables(
            vec![
                Variable::new(&id("InspectionId"), qn("InspectionId"), "InspectionId", 0u32),
                Variable::new(&id("ResultId"), qn("ResultId"), "ResultId", ""),
                Variable::new(&id("IsPass"), qn("IsPass"), "IsPass", false),
                Variable::new(&id("ResultCode"), qn("ResultCode"), "ResultCode", 0u16),
                Variable::new(&id("ClassName"), qn("ClassName"), "ClassName", ""),
                Variable::new(&id("Score"), qn("Score"), "Score", 0f64),
                Variable::new(&id("CreationTime"), qn("CreationTime"), "CreationTime", DateTime::now()),
                Variable::new(&id("Recipe"), qn("Recipe"), "Recipe", ""),
            ],
            &lr,
        );
        let names: Vec<UAString> = setup.recipes.iter().map(|r| UAString::from(r.as_str())).collect();
        let _ = space.add_variables(
            vec![
                Variable::new(&id("Recipes"), qn("Recipes"), "Recipes", names),
                Variable::new(&id("ActiveRecipe"), qn("ActiveRecipe"), "ActiveRecipe", ""),
            ],
            &rec,
        );
        MethodBuilder::new(&select, qn("SelectRecipe"), "SelectRecipe")
            .component_of(rec.clone())
            .input_args(
                &mut *space,
                &id("SelectRecipeInput"),
                &[("Name", DataTypeId::String).into()],
            )
            .output_args(
                &mut *space,
                &id("SelectRecipeOutput"),
                &[("Result", DataTypeId::String).into()],
            )
            .insert(&mut *space);
    }

    let inner = manager.inner();
    let read = |node: NodeId, f: Box<dyn Fn(&PlcState) -> Variant + Send + Sync>| {
        let st = state.clone();
        inner.add_read_callback(node, move |_, _, _| Ok(DataValue::new_now(f(&st))));
    };
    read(id("CurrentState"), Box::new(|s| Variant::from(state_name(s))));
    read(id("ItemsInspected"), Box::new(|s| Variant::from(s.counts().0)));
    read(id("ItemsRejected"), Box::new(|s| Variant::from(s.counts().1)));
    let names = setup.recipes.clone();
    read(
        id("ActiveRecipe"),
        Box::new(move |s| Variant::from(names.get(s.recipe_active() as usize).cloned().unwrap_or_default())),
    );
    inner.add_method_callback(select, move |args| {
        let Some(Variant::String(name)) = args.first() else {
            return Err(StatusCode::BadInvalidArgument);
        };
        let Some(r) = &recipes else {
            return Err(StatusCode::BadNotSupported);
        };
        match r.request_by_name(name.as_ref()) {
            Ok(()) => Ok(vec![Variant::from(format!(
                "recipe \"{}\" requested; ActiveRecipe names it once it decides",
                name.as_ref()
            ))]),
            Err(_) => Err(StatusCode::BadInvalidArgument),
        }
    });
}
