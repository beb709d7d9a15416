//! Hybrid knowledge base search: chunks embedded in the background through a real local HTTP
//! server playing an OpenAI-compatible embeddings endpoint, stored in sqlite-vec and pgvector,
//! searched and fused with lexical search; a failing or slow endpoint leaves lexical search
//! working; PostgreSQL without the vector extension searches lexically.

use std::path::{Path, PathBuf};
use std::time::Duration;

use librarian::{import_dir, KbStore, SearchFilter};
use opscase::config::{EmbeddingsConfig, Secret};
use opscase::Config;
use orchestrator::{Role, SqlPool};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::{
    client_with, create_key, eventually, postgres_admin_url, Backend, TestApp, TestDatabase,
};

const MODEL: &str = "fake-embed";
const DIMENSIONS: usize = 256;
const API_KEY: &str = "sk-test-0123456789";

/// Words the fake embedding places where another word is: synonyms no lexical search knows.
const SYNONYMS: &[(&str, &str)] = &[("wallaby", "quokka"), ("marsupial", "numbat")];

/// A deterministic embedding: a hashed bag of words (each word, or the word it stands for,
/// adds ±1 at a position of its hash), as the fake endpoint answers.
fn fake_embedding(text: &str) -> Vec<f64> {
    let mut vector = vec![0.0; DIMENSIONS];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let word = word.to_lowercase();
        let word = SYNONYMS
            .iter()
            .find(|(synonym, _)| *synonym == word)
            .map_or(word.as_str(), |(_, meant)| meant);
        // FNV-1a: stable across runs and platforms.
        let hash = word.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
        vector[(hash % DIMENSIONS as u64) as usize] += sign;
    }
    if vector.iter().all(|&x| x == 0.0) {
        vector[0] = 1.0;
    }
    vector
}

/// Answers `POST /v1/embeddings` like OpenAI: one `data` item per input, by index (listed in
/// reverse, so the client must sort by `index`).
struct FakeEmbeddings;

impl Respond for FakeEmbeddings {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let inputs = body["input"].as_array().unwrap();
        let mut data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(index, text)| {
                json!({"object": "embedding", "index": index,
                    "embedding": fake_embedding(text.as_str().unwrap())})
            })
            .collect();
        data.reverse();
        ResponseTemplate::new(200).set_body_json(json!({
            "object": "list", "data": data, "model": MODEL,
            "usage": {"prompt_tokens": 1, "total_tokens": 1}
        }))
    }
}

/// The embeddings endpoint at `server`, as `[librarian.embeddings]` would say it.
fn embeddings_at(server: &MockServer, timeout_s: f64) -> EmbeddingsConfig {
    EmbeddingsConfig {
        base_url: format!("{}/v1", server.uri()),
        model: MODEL.into(),
        dimensions: DIMENSIONS,
        batch_size: 16,
        timeout_s,
        send_dimensions: true,
        api_key: Some(Secret::new(API_KEY)),
    }
}

/// A healthy fake endpoint that answers only the exact path, method and key.
async fn healthy_endpoint() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/embeddings"))
        .and(header(
            "authorization",
            format!("Bearer {API_KEY}").as_str(),
        ))
        .respond_with(FakeEmbeddings)
        .mount(&server)
        .await;
    server
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora/runbooks")
}

fn store(app: &TestApp) -> KbStore {
    KbStore::new(app.orchestrator.store().pool().clone())
}

async fn start(database: &TestDatabase, embeddings: EmbeddingsConfig) -> TestApp {
    let mut config: Config = database.config();
    config.librarian.embeddings = Some(embeddings);
    TestApp::start(config).await
}

async fn search(app: &TestApp, client: &reqwest::Client, query: &[(&str, &str)]) -> Vec<Value> {
    let response = client
        .get(app.url("/v1/kb/search"))
        .query(query)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{query:?}");
    let body: Value = response.json().await.unwrap();
    body["hits"].as_array().unwrap().clone()
}

async fn post_doc(app: &TestApp, client: &reqwest::Client, doc: Value) -> String {
    let response = client
        .post(app.url("/v1/kb/docs"))
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Until every chunk has its vector.
async fn all_embedded(app: &TestApp) {
    eventually("every chunk embedded", 120, async || {
        let chunks = app.metric("kb_chunks").await;
        chunks > 0.0 && app.metric("kb_chunks_embedded").await == chunks
    })
    .await;
}

/// On SQLite, whether every stored vector has its bits for the Hamming pass, and nothing else
/// does (always true on PostgreSQL, which has no bits).
async fn bits_follow_vectors(app: &TestApp) -> bool {
    let SqlPool::Sqlite(pool) = app.orchestrator.store().pool().clone() else {
        return true;
    };
    let (vectors, bits, orphans): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM kb_chunk_vec), (SELECT COUNT(*) FROM kb_chunk_bits), \
         (SELECT COUNT(*) FROM kb_chunk_bits b WHERE NOT EXISTS (SELECT 1 FROM kb_chunk_vec v \
          WHERE v.doc_id = b.doc_id AND v.idx = b.idx))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    vectors > 0 && vectors == bits && orphans == 0
}

fn retrievers(hit: &Value) -> Vec<&str> {
    hit["retrievers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect()
}

async fn vectors_are_stored_and_searched(backend: Backend) {
    let Some(database) = TestDatabase::create(backend).await else {
        return;
    };
    let endpoint = healthy_endpoint().await;
    let app = start(&database, embeddings_at(&endpoint, 5.0)).await;
    import_dir(&store(&app), &corpus(), None, "runbooks", false)
        .await
        .unwrap();
    let fleet = post_doc(
        &app,
        &app.client,
        json!({"title": "FleetDown", "url": "https://wiki.example.com/fleet",
            "content": "# FleetDown\n\n## Mitigation\n\nRestart the quokka fleet, quokka by quokka.\n"}),
    )
    .await;
    let acme =
        client_with(&create_key(&app.orchestrator, "acme", &[Role::Librarian], Some("acme")).await);
    let globex = client_with(
        &create_key(&app.orchestrator, "globex", &[Role::Viewer], Some("globex")).await,
    );
    let numbat = post_doc(
        &app,
        &acme,
        json!({"title": "QueueStuck", "url": "https://wiki.example.com/queue",
            "content": "# QueueStuck\n\n## Mitigation\n\nDrain the numbat queue, numbat by numbat.\n"}),
    )
    .await;
    all_embedded(&app).await;
    let (_, chunks) = store(&app).counts().await.unwrap();
    assert_eq!(app.metric("kb_chunks_embedded").await as i64, chunks);
    assert!(bits_follow_vectors(&app).await);

    // The exact requests: path, method, bearer key, and the body's model, inputs and
    // dimensions; the fleet runbook's chunk was sent as its heading path and text.
    let requests = endpoint.received_requests().await.unwrap();
    assert!(requests.len() >= 2, "{} requests", requests.len());
    let mut fleet_sent = false;
    for request in &requests {
        assert_eq!(request.url.path(), "/v1/embeddings");
        assert_eq!(request.method.as_str(), "POST");
        assert_eq!(
            request.headers.get("authorization").unwrap(),
            &format!("Bearer {API_KEY}")
        );
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["dimensions", "input", "model"], "{body}");
        assert_eq!(body["model"], MODEL);
        assert_eq!(body["dimensions"], DIMENSIONS);
        let inputs = body["input"].as_array().unwrap();
        assert!(
            (1..=16).contains(&inputs.len()),
            "batch of {}",
            inputs.len()
        );
        fleet_sent |= inputs
            .iter()
            .any(|i| i == "FleetDown › Mitigation\n\nRestart the quokka fleet, quokka by quokka.");
    }
    assert!(fleet_sent);
    assert_eq!(app.metric("kb_embedding_errors_total").await, 0.0);

    // A word no document holds: lexical search finds nothing, the vectors find the fleet
    // runbook (the fake embedding maps wallaby to quokka), and the query went out as sent.
    let lexical = store(&app)
        .search("wallaby", 5, &SearchFilter::default())
        .await
        .unwrap();
    assert!(lexical.is_empty(), "{lexical:?}");
    let hits = search(&app, &app.client, &[("q", "wallaby"), ("k", "3")]).await;
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0]["doc_id"], fleet.as_str(), "{hits:#?}");
    assert_eq!(hits[0]["heading_path"], "FleetDown › Mitigation");
    assert_eq!(hits[0]["url"], "https://wiki.example.com/fleet");
    assert_eq!(retrievers(&hits[0]), ["vector"]);
    assert!(hits.iter().all(|hit| retrievers(hit) == ["vector"]));
    let requests = endpoint.received_requests().await.unwrap();
    let query: Value = serde_json::from_slice(&requests.last().unwrap().body).unwrap();
    assert_eq!(
        query,
        json!({"model": MODEL, "input": ["wallaby"], "dimensions": DIMENSIONS})
    );

    // No words, no hits, as in lexical search; and no call to the endpoint for them.
    let calls = endpoint.received_requests().await.unwrap().len();
    assert!(search(&app, &app.client, &[("q", "%% -- ()")])
        .await
        .is_empty());
    assert_eq!(endpoint.received_requests().await.unwrap().len(), calls);

    // Found by both: first, with both retrievers, its score the fused one (two first ranks).
    let hits = search(&app, &app.client, &[("q", "quokka fleet"), ("k", "5")]).await;
    assert_eq!(hits[0]["doc_id"], fleet.as_str());
    assert_eq!(retrievers(&hits[0]), ["lexical", "vector"]);
    let fused = hits[0]["score"].as_f64().unwrap();
    assert!((fused - 2.0 / 61.0).abs() < 1e-9, "{fused}");

    // An alert still finds its runbook first.
    let hits = search(
        &app,
        &app.client,
        &[(
            "q",
            "KubePodCrashLooping: Pod is crash looping. Pod shop/checkout-7d9f is in waiting state.",
        )],
    )
    .await;
    assert_eq!(hits[0]["title"], "KubePodCrashLooping");
    assert!(retrievers(&hits[0]).contains(&"lexical"));

    // Tenants hold on the vector side: another tenant's nearest chunk is never shown.
    let seen = search(&app, &globex, &[("q", "marsupial"), ("k", "50")]).await;
    assert_eq!(seen.len(), 50);
    assert!(seen.iter().all(|hit| hit["tenant"].is_null()), "{seen:?}");
    assert!(seen.iter().all(|hit| hit["doc_id"] != numbat.as_str()));
    let own = search(&app, &acme, &[("q", "marsupial"), ("k", "3")]).await;
    assert_eq!(own[0]["doc_id"], numbat.as_str(), "{own:#?}");
    assert_eq!(retrievers(&own[0]), ["vector"]);
    assert_eq!(own[0]["tenant"], "acme");
    // And sources do.
    let runbooks = search(
        &app,
        &app.client,
        &[("q", "wallaby"), ("k", "10"), ("source", "runbooks")],
    )
    .await;
    assert_eq!(runbooks.len(), 10);
    assert!(runbooks.iter().all(|hit| hit["source"] == "runbooks"));

    // An edited document's chunks lose their vectors and get new ones.
    let response = app
        .client
        .post(app.url("/v1/kb/docs"))
        .json(
            &json!({"title": "FleetDown", "url": "https://wiki.example.com/fleet",
            "content": "# FleetDown\n\n## Mitigation\n\nRestart the bilby fleet.\n"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    all_embedded(&app).await;
    let hits = search(&app, &app.client, &[("q", "wallaby"), ("k", "3")]).await;
    assert_ne!(hits[0]["doc_id"], fleet.as_str(), "the quokka is gone");
    let hits = search(&app, &app.client, &[("q", "bilby"), ("k", "3")]).await;
    assert_eq!(hits[0]["doc_id"], fleet.as_str());
    assert_eq!(retrievers(&hits[0]), ["lexical", "vector"]);
    assert!(
        bits_follow_vectors(&app).await,
        "the old bits went with the old vectors"
    );
    // Vectors stored before the bits existed get theirs when the index is next prepared.
    if let SqlPool::Sqlite(pool) = app.orchestrator.store().pool().clone() {
        sqlx::query("DELETE FROM kb_chunk_bits")
            .execute(&pool)
            .await
            .unwrap();
        assert!(!bits_follow_vectors(&app).await);
        librarian::VectorIndex::prepare(SqlPool::Sqlite(pool), MODEL, DIMENSIONS)
            .await
            .unwrap();
        assert!(bits_follow_vectors(&app).await);
    }

    assert!(app.metric("kb_search_seconds_count{mode=\"hybrid\"}").await >= 8.0);
    assert_eq!(
        app.metric("kb_search_seconds_count{mode=\"lexical\"}")
            .await,
        0.0
    );
    assert_eq!(app.metric("kb_embedding_errors_total").await, 0.0);
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["checks"]["kb_vectors"], "ok");
    drop(app);
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vectors_are_stored_and_searched_on_sqlite() {
    vectors_are_stored_and_searched(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vectors_are_stored_and_searched_on_postgres() {
    vectors_are_stored_and_searched(Backend::Postgres).await;
}

/// The bits a search on SQLite ranks first are a copy in memory, each index its own (as in
/// two processes on one database file): one sees what the other stores and deletes, and a
/// tenant's filter holds in it as in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bits_in_memory_follow_another_writer_on_sqlite() {
    librarian::sqlite_vec::register();
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let orchestrator = orchestrator::connect(&database.url(), 4).await.unwrap();
    orchestrator.migrate().await.unwrap();
    let pool = orchestrator.pool();
    let SqlPool::Sqlite(sqlite) = pool.clone() else {
        unreachable!("a SQLite database")
    };
    let prepare = || async {
        match librarian::VectorIndex::prepare(pool.clone(), MODEL, DIMENSIONS)
            .await
            .unwrap()
        {
            librarian::Prepared::Ready(index) => index,
            librarian::Prepared::Unavailable(why) => panic!("{why}"),
        }
    };
    let (reader, writer) = (prepare().await, prepare().await);
    let kb = KbStore::new(pool.clone());
    let put = |tenant: Option<&str>, path: &str, text: &str| {
        librarian::DocInput::markdown(tenant.map(String::from), "runbooks", path, text, path, None)
    };
    let embed_pending = async || {
        let pending = writer.pending(None, 100).await.unwrap();
        let vectors: Vec<Vec<f32>> = pending
            .iter()
            .map(|chunk| {
                fake_embedding(&chunk.text)
                    .iter()
                    .map(|&x| x as f32)
                    .collect()
            })
            .collect();
        writer.store(&pending, &vectors).await.unwrap()
    };
    let version = async || -> (i64, i64) {
        sqlx::query_as("SELECT inserted, deleted FROM kb_chunk_bits_version")
            .fetch_one(&sqlite)
            .await
            .unwrap()
    };
    let nearest = async |text: &str, tenant: Option<&str>| -> Vec<String> {
        let query: Vec<f32> = fake_embedding(text).iter().map(|&x| x as f32).collect();
        let filter = SearchFilter {
            tenant: tenant.map(String::from),
            ..SearchFilter::default()
        };
        let hits = reader.search(&query, 3, &filter).await.unwrap();
        hits.into_iter().map(|hit| hit.url).collect()
    };

    assert!(
        nearest("quokka", None).await.is_empty(),
        "nothing stored yet"
    );
    let now = chrono::Utc::now();
    kb.upsert(&put(None, "fleet.md", RUNBOOK), now)
        .await
        .unwrap();
    kb.upsert(
        &put(
            Some("acme"),
            "numbat.md",
            "# NumbatDown\n\nThe numbat colony is down.\n",
        ),
        now,
    )
    .await
    .unwrap();
    // The embedder's cursor: the chunks after a key.
    let all = writer.pending(None, 100).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(writer.unembedded().await.unwrap(), 2);
    let after_first = writer
        .pending(Some((all[0].doc_id.as_str(), all[0].idx)), 100)
        .await
        .unwrap();
    assert_eq!(after_first, all[1..]);
    assert_eq!(embed_pending().await, 2);
    assert_eq!(writer.unembedded().await.unwrap(), 0);
    assert_eq!(version().await, (2, 0));
    assert_eq!(
        nearest("quokka fleet", None).await[0],
        "fleet.md",
        "inserts are read"
    );
    assert_eq!(nearest("numbat colony", Some("acme")).await[0], "numbat.md");
    assert_eq!(
        nearest("numbat colony", Some("globex")).await,
        ["fleet.md"],
        "another tenant sees the global page only"
    );

    // A delete (here by the cascade from the document) is counted, and the copy read again.
    let numbat = kb.list(&SearchFilter::default(), 10).await.unwrap();
    let numbat = numbat.iter().find(|doc| doc.url == "numbat.md").unwrap();
    assert!(kb.delete(&numbat.id).await.unwrap());
    assert_eq!(version().await, (2, 1), "the cascade fired the trigger");
    assert_eq!(nearest("numbat colony", Some("acme")).await, ["fleet.md"]);
    kb.upsert(
        &put(
            None,
            "bilby.md",
            "# BilbyDown\n\nThe bilby burrow is empty.\n",
        ),
        now,
    )
    .await
    .unwrap();
    assert_eq!(embed_pending().await, 1);
    assert_eq!(nearest("bilby burrow", None).await[0], "bilby.md");
    orchestrator.close().await;
}

const RUNBOOK: &str =
    "# FleetDown\n\n## Mitigation\n\nRestart the quokka fleet, quokka by quokka.\n";

async fn a_failing_endpoint_leaves_lexical_search(backend: Backend) {
    let Some(database) = TestDatabase::create(backend).await else {
        return;
    };
    let endpoint = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("model not loaded"))
        .mount(&endpoint)
        .await;
    let app = start(&database, embeddings_at(&endpoint, 5.0)).await;
    // The import does not wait for vectors, and does not fail for want of them.
    let id = post_doc(
        &app,
        &app.client,
        json!({"title": "FleetDown", "url": "https://wiki.example.com/fleet", "content": RUNBOOK}),
    )
    .await;
    eventually("the embedder's failures counted", 30, async || {
        app.metric("kb_embedding_errors_total").await >= 2.0
    })
    .await;
    let before = app.metric("kb_embedding_errors_total").await;
    let hits = search(&app, &app.client, &[("q", "quokka fleet")]).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["doc_id"], id.as_str());
    assert_eq!(retrievers(&hits[0]), ["lexical"]);
    assert!(app.metric("kb_embedding_errors_total").await > before);
    assert_eq!(app.metric("kb_chunks_embedded").await, 0.0);

    // The endpoint heals: the chunk is embedded on a later try, and search is hybrid again.
    endpoint.reset().await;
    Mock::given(method("POST"))
        .and(path("/v1/embeddings"))
        .respond_with(FakeEmbeddings)
        .mount(&endpoint)
        .await;
    all_embedded(&app).await;
    let hits = search(&app, &app.client, &[("q", "wallaby")]).await;
    assert_eq!(hits[0]["doc_id"], id.as_str());
    assert_eq!(retrievers(&hits[0]), ["vector"]);
    drop(app);
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_endpoint_leaves_lexical_search_on_sqlite() {
    a_failing_endpoint_leaves_lexical_search(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_endpoint_leaves_lexical_search_on_postgres() {
    a_failing_endpoint_leaves_lexical_search(Backend::Postgres).await;
}

async fn a_slow_endpoint_leaves_lexical_search(backend: Backend) {
    let Some(database) = TestDatabase::create(backend).await else {
        return;
    };
    let endpoint = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(SlowEmbeddings)
        .mount(&endpoint)
        .await;
    let app = start(&database, embeddings_at(&endpoint, 0.3)).await;
    let id = post_doc(
        &app,
        &app.client,
        json!({"title": "FleetDown", "url": "https://wiki.example.com/fleet", "content": RUNBOOK}),
    )
    .await;
    let before = app.metric("kb_embedding_errors_total").await;
    let hits = search(&app, &app.client, &[("q", "quokka")]).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["doc_id"], id.as_str());
    assert_eq!(retrievers(&hits[0]), ["lexical"]);
    assert!(app.metric("kb_embedding_errors_total").await > before);
    assert_eq!(app.metric("kb_chunks_embedded").await, 0.0);
    assert!(app.metric("kb_search_seconds_count{mode=\"hybrid\"}").await >= 1.0);
    drop(app);
    database.drop_database().await;
}

/// Answers correctly, but long after the timeout the test configures.
struct SlowEmbeddings;

impl Respond for SlowEmbeddings {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        FakeEmbeddings
            .respond(request)
            .set_delay(Duration::from_secs(30))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_endpoint_leaves_lexical_search_on_sqlite() {
    a_slow_endpoint_leaves_lexical_search(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_endpoint_leaves_lexical_search_on_postgres() {
    a_slow_endpoint_leaves_lexical_search(Backend::Postgres).await;
}

/// A PostgreSQL database whose service role is no superuser: the server has pgvector
/// installed, but the extension was never created in this database and the role cannot
/// create it, as where a DBA has not enabled it. Search is lexical, said in `/readyz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_without_the_vector_extension_searches_lexically() {
    let Some(database) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let name = database.postgres_name.clone().unwrap();
    let role = format!("{name}_app");
    let mut admin = PgConnection::connect(&database.url()).await.unwrap();
    for statement in [
        format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"),
        format!("GRANT CONNECT ON DATABASE {name} TO {role}"),
        format!("GRANT USAGE, CREATE ON SCHEMA public TO {role}"),
    ] {
        admin.execute(statement.as_str()).await.unwrap();
    }
    let extension: Option<String> =
        sqlx::query_scalar("SELECT extname::text FROM pg_extension WHERE extname = 'vector'")
            .fetch_optional(&mut admin)
            .await
            .unwrap();
    assert_eq!(extension, None);
    admin.close().await.unwrap();

    let endpoint = healthy_endpoint().await;
    let mut config = database.config();
    let url = database.url().replacen("postgres@", &format!("{role}@"), 1);
    assert!(url.contains(&format!("{role}@")), "{url}");
    config.database.url = Some(url);
    config.librarian.embeddings = Some(embeddings_at(&endpoint, 5.0));
    let app = TestApp::start(config).await;

    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    let said = ready["checks"]["kb_vectors"].as_str().unwrap();
    assert!(
        said.starts_with("lexical only:") && said.contains("cannot create"),
        "{said}"
    );
    let id = post_doc(
        &app,
        &app.client,
        json!({"title": "FleetDown", "url": "https://wiki.example.com/fleet", "content": RUNBOOK}),
    )
    .await;
    let hits = search(&app, &app.client, &[("q", "quokka fleet")]).await;
    assert_eq!(hits[0]["doc_id"], id.as_str());
    assert_eq!(retrievers(&hits[0]), ["lexical"]);
    assert!(search(&app, &app.client, &[("q", "wallaby")])
        .await
        .is_empty());
    assert_eq!(
        app.metric("kb_search_seconds_count{mode=\"lexical\"}")
            .await,
        2.0
    );
    assert_eq!(app.metric("kb_embedding_errors_total").await, 0.0);
    assert!(endpoint.received_requests().await.unwrap().is_empty());
    drop(app);
    database.drop_database().await;
    if let Ok(mut admin) = PgConnection::connect(&postgres_admin_url()).await {
        let _ = admin
            .execute(format!("DROP ROLE IF EXISTS {role}").as_str())
            .await;
    }
}

/// Refuses (400) any batch holding a text with "poison", as an endpoint refuses a text too
/// long for its model; embeds the rest.
struct RefusesPoison;

impl Respond for RefusesPoison {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let poisoned = body["input"]
            .as_array()
            .unwrap()
            .iter()
            .any(|text| text.as_str().unwrap().contains("poison"));
        if poisoned {
            return ResponseTemplate::new(400).set_body_json(json!({"error": {
                "message": "input is too long for this model", "type": "invalid_request_error"}}));
        }
        FakeEmbeddings.respond(request)
    }
}

async fn a_refused_chunk_does_not_hold_up_the_others(backend: Backend) {
    let Some(database) = TestDatabase::create(backend).await else {
        return;
    };
    let endpoint = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/embeddings"))
        .respond_with(RefusesPoison)
        .mount(&endpoint)
        .await;
    let app = start(&database, embeddings_at(&endpoint, 5.0)).await;
    // One document whose second chunk is refused, posted before a good one: all in a batch.
    let mixed = post_doc(
        &app,
        &app.client,
        json!({"title": "Mixed", "url": "https://wiki.example.com/mixed",
            "content": "# Mixed\n\n## One\n\nThe quokka part.\n\n## Two\n\nThe poison part.\n"}),
    )
    .await;
    let fleet = post_doc(
        &app,
        &app.client,
        json!({"title": "FleetDown", "url": "https://wiki.example.com/fleet", "content": RUNBOOK}),
    )
    .await;
    eventually("every chunk but the refused one embedded", 60, async || {
        app.metric("kb_chunks_embedded").await == 2.0
    })
    .await;
    assert_eq!(app.metric("kb_chunks").await, 3.0);
    assert!(app.metric("kb_embedding_errors_total").await >= 1.0);
    let hits = search(&app, &app.client, &[("q", "wallaby"), ("k", "3")]).await;
    let found: Vec<_> = hits.iter().map(|h| h["doc_id"].as_str().unwrap()).collect();
    assert!(
        found.contains(&fleet.as_str()) && found.contains(&mixed.as_str()),
        "{hits:#?}"
    );
    // The refused chunk is still there for lexical search.
    let hits = search(&app, &app.client, &[("q", "poison"), ("k", "3")]).await;
    assert_eq!(hits[0]["doc_id"], mixed.as_str());
    assert_eq!(hits[0]["heading_path"], "Mixed › Two");
    assert!(retrievers(&hits[0]).contains(&"lexical"));
    drop(app);
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_chunk_does_not_hold_up_the_others_on_sqlite() {
    a_refused_chunk_does_not_hold_up_the_others(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_chunk_does_not_hold_up_the_others_on_postgres() {
    a_refused_chunk_does_not_hold_up_the_others(Backend::Postgres).await;
}
