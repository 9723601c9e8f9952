//! Every way to reach an app through the router: default name, domains, wildcards,
//! NGINX_SERVER_NAME, the X-App header.

use berth_testkit::{http_get_with, output_text};

use crate::World;

#[test]
fn domains_wildcards_and_x_app_reach_the_right_app() {
    let world = World::start("routing");
    let a = world.app_repo("alpha", "a1", "web: python3 app.py\n", "");
    world.push_ok(&a, "alpha");
    let b = world.app_repo("beta", "b1", "web: python3 app.py\n", "");
    world.push_ok(&b, "beta");

    assert_eq!(
        world.ssh_ok(&["domains:add", "alpha", "WWW.Alpha.test"]),
        "alpha answers at www.alpha.test too\n"
    );
    world.ssh_ok(&["domains:add", "alpha", "*.wild.test"]);
    let domains = world.ssh_ok(&["domains", "alpha"]);
    assert_eq!(
        domains,
        "alpha.berth.test  (default)\n*.wild.test  (domains:add)\nwww.alpha.test  (domains:add)\n"
    );
    for host in ["www.alpha.test", "x.wild.test", "deep.x.wild.test"] {
        assert_eq!(world.daemon.get(host, "/").unwrap().body, "? a1", "{host}");
    }
    assert_eq!(world.daemon.get("wild.test", "/").unwrap().status, 404, "a wildcard needs a label");

    // A name belongs to one app.
    let output = world.ssh(&["domains:add", "beta", "www.alpha.test"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output_text(&output).contains("www.alpha.test is already served by alpha"),
        "{}",
        output_text(&output)
    );
    b.commit(&[("ENV", "NGINX_SERVER_NAME=www.alpha.test\n")], "steal").unwrap();
    let out = world.push_refused(&b, "beta");
    assert!(
        out.contains("www.alpha.test is already served by alpha; remove it there first"),
        "{out}"
    );
    assert_eq!(world.daemon.get("www.alpha.test", "/").unwrap().body, "? a1");

    // X-App reaches an app on any host the router serves.
    let page =
        http_get_with(world.daemon.http_addr, "www.alpha.test", "/", &[("X-App", "beta")]).unwrap();
    assert_eq!(page.body, "? b1");
    let headers =
        http_get_with(world.daemon.http_addr, "alpha.berth.test", "/headers", &[]).unwrap().body;
    assert!(headers.contains("x-request-id: "), "{headers}");
    assert!(
        headers.contains("forwarded: for=127.0.0.1;proto=http;host=alpha.berth.test"),
        "{headers}"
    );

    // Removing a domain takes it out of the routes at once, without a restart.
    world.ssh_ok(&["domains:remove", "alpha", "www.alpha.test"]);
    assert_eq!(world.daemon.get("www.alpha.test", "/").unwrap().status, 404);
    world.ssh_ok(&["domains:add", "beta", "www.alpha.test"]);
    assert_eq!(world.daemon.get("www.alpha.test", "/").unwrap().body, "? b1");
}
