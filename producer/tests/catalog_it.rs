//! `load-catalog` with a Steam-style CSV: games on the compacted product topic, keyed by app id,
//! genres as categories; users with country, device and segment.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use cartstream_events::types::Product;
use cartstream_events::Decoder;
use cartstream_kafka::read::key_str;
use cartstream_kafka::Topic;
use common::{stdout, temp_path, Namespace};
use rdkafka::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steam_csv_becomes_the_product_dimension() {
    let ns = Namespace::new("pcat").await;
    let csv = temp_path("steam.csv");
    std::fs::write(
        &csv,
        "appid,name,release_date,english,developer,publisher,platforms,required_age,categories,genres,steamspy_tags,achievements,positive_ratings,negative_ratings,average_playtime,median_playtime,owners,price\n\
10,Counter-Strike,2000-11-01,1,Valve,Valve,windows;mac;linux,0,Multi-player,Action,Action;FPS;Multiplayer,0,124534,3339,17612,317,10000000-20000000,7.19\n\
20,Team Fortress Classic,1999-04-01,1,Valve,Valve,windows,0,Online Multi-Player,Action,Action;FPS,0,3318,633,277,62,5000000-10000000,3.99\n\
570,\"Dota 2, the game\",2013-07-09,1,Valve,Valve,windows,0,Multi-player,Free to Play;Strategy,Free to Play;MOBA,0,863507,142079,23944,801,100000000-200000000,0.0\n\
x,Broken row,2000-01-01,1,X,X,windows,0,,Indie,,0,1,1,0,0,0-20000,1.0\n",
    )
    .unwrap();
    let out = ns.run(&[
        "load-catalog",
        "--steam-csv",
        csv.to_str().unwrap(),
        "--catalog-currency",
        "GBP",
        "--users",
        "50",
    ]);
    let shown = stdout(&out);
    assert!(
        shown.contains("3 products") && shown.contains("bad_appid"),
        "{shown}"
    );
    let decoder = Decoder::<Product>::new(ns.registry.clone());
    let mut products = Vec::new();
    for m in ns.read(Topic::Products) {
        let p = decoder.decode(m.payload().unwrap()).await.unwrap();
        assert_eq!(key_str(&m), Some(p.product_id.to_string().as_str()));
        products.push(p);
    }
    products.sort_by_key(|p| p.product_id);
    let codes: Vec<&str> = products.iter().map(|p| p.category_code.as_str()).collect();
    assert_eq!(
        codes,
        vec!["games.action", "games.action", "games.free_to_play"]
    );
    assert!(products
        .iter()
        .all(|p| p.catalog == "steam" && p.currency == "GBP"));
    assert_eq!(ns.read(Topic::Users).len(), 50);

    // The same catalog drives a simulation; the free game is never sold.
    let out = ns.run(&[
        "simulate",
        "--steam-csv",
        csv.to_str().unwrap(),
        "--users",
        "50",
        "--count",
        "300",
        "--rate",
        "0",
        "--skip-dimensions",
    ]);
    assert!(
        stdout(&out).contains("sent 300 records"),
        "{}",
        stdout(&out)
    );
    ns.cleanup().await;
}
