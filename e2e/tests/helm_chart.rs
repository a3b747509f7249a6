//! The Helm chart in `charts/vaultsync`: it lints, renders objects the real apiserver accepts, installs into a
//! namespace (the controller manager then makes the operator's ReplicaSet), and grants the operator's service
//! account exactly the rights it needs, checked with `kubectl auth can-i`.
//!
//! helm and kubectl run with a throwaway HOME and HELM_* folders in the temp folder, so nothing is written to the
//! user's home.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role},
};
use kube::{Api, api::ListParams};
use vaultsync_e2e::{
    TestNamespace,
    chart::{CHART, HelmTools, assert_success, repo_root, text},
    eventually, install_crds,
};

/// The documents of a multi-document YAML stream.
fn documents(yaml: &str) -> Vec<&str> {
    yaml.split("\n---\n").map(str::trim).filter(|d| d.contains("\nkind: ") || d.starts_with("kind: ")).collect()
}

/// The rendered documents of one kind (matched on the top-level `kind:` line).
fn of_kind<'a>(yaml: &'a str, kind: &str) -> Vec<&'a str> {
    let line = format!("kind: {kind}");
    documents(yaml).into_iter().filter(|d| d.lines().any(|l| l == line)).collect()
}

fn one_of_kind<'a>(yaml: &'a str, kind: &str) -> &'a str {
    let docs = of_kind(yaml, kind);
    assert_eq!(docs.len(), 1, "expected one {kind} in the rendered chart, found {}:\n{yaml}", docs.len());
    docs[0]
}

fn assert_no_wildcards(rules: &[PolicyRule], what: &str) {
    for rule in rules {
        let all = rule
            .verbs
            .iter()
            .chain(rule.resources.iter().flatten())
            .chain(rule.api_groups.iter().flatten())
            .chain(rule.resource_names.iter().flatten());
        for word in all {
            assert!(!word.contains('*'), "{what} has a wildcard {word:?} in {rule:?}");
        }
        assert!(rule.non_resource_urls.is_none(), "{what} grants non-resource URLs: {rule:?}");
    }
}

#[tokio::test]
async fn chart_lints_cleanly() {
    let tools = HelmTools::offline();
    for extra in [
        &[][..],
        &["--set", "replicaCount=1", "--set", "rollouts.enabled=false"][..],
        &["--set", "metrics.serviceMonitor.enabled=true", "--set", "serviceAccount.create=false"][..],
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend_from_slice(extra);
        let out = tools.helm(&args).await;
        assert_success(&out, "helm lint");
        let report = text(&out);
        assert!(report.contains("1 chart(s) linted, 0 chart(s) failed"), "helm lint {extra:?}:\n{report}");
        assert!(!report.contains("[WARNING]") && !report.contains("[ERROR]"), "helm lint {extra:?}:\n{report}");
    }
}

#[test]
fn chart_crds_are_the_generated_ones() {
    let root = repo_root();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("crds")).expect("reading crds/") {
        let name = entry.expect("crds/ entry").file_name();
        let generated = std::fs::read_to_string(root.join("crds").join(&name)).expect("reading a CRD");
        let copy = std::fs::read_to_string(root.join(CHART).join("crds").join(&name))
            .unwrap_or_else(|e| panic!("the chart has no copy of {name:?}: {e}"));
        assert_eq!(generated, copy, "the chart's copy of {name:?} differs; run `make crds`");
        names.push(name.to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(
        names,
        ["clustervaultstores.vaultsync.dev.yaml", "vaultsecrets.vaultsync.dev.yaml", "vaultstores.vaultsync.dev.yaml"]
    );
    let in_chart = std::fs::read_dir(root.join(CHART).join("crds")).expect("reading the chart's crds/").count();
    assert_eq!(in_chart, names.len(), "the chart's crds/ holds files that crds/ does not");
}

#[tokio::test]
async fn rendered_chart_is_accepted_by_the_apiserver_and_hardened() {
    let ns = TestNamespace::new("helm-render").await;
    install_crds(&ns.client).await;
    let tools = HelmTools::new();

    let yaml = tools.render(&ns.name, &["--set", "image.tag=test"]).await;
    let apply =
        tools.kubectl(&["apply", "--dry-run=server", "--namespace", &ns.name, "-f", "-"], Some(yaml.clone())).await;
    assert_success(&apply, "kubectl apply --dry-run=server");
    let applied = text(&apply);
    for object in [
        "serviceaccount/vs-vaultsync",
        &format!("clusterrole.rbac.authorization.k8s.io/vs-vaultsync-{}", ns.name),
        &format!("clusterrolebinding.rbac.authorization.k8s.io/vs-vaultsync-{}", ns.name),
        "role.rbac.authorization.k8s.io/vs-vaultsync",
        "rolebinding.rbac.authorization.k8s.io/vs-vaultsync",
        "service/vs-vaultsync-metrics",
        "deployment.apps/vs-vaultsync",
        "poddisruptionbudget.policy/vs-vaultsync",
    ] {
        assert!(applied.contains(&format!("{object} created (server dry run)")), "{object} not applied:\n{applied}");
    }
    assert_eq!(documents(&yaml).len(), 8, "unexpected objects in the rendered chart:\n{yaml}");

    let deployment = one_of_kind(&yaml, "Deployment");
    for fact in [
        "replicas: 2",
        "image: \"ghcr.io/vaultsync/vaultsync-operator:test\"",
        "runAsNonRoot: true",
        "runAsUser: 65532",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "- ALL",
        "type: RuntimeDefault",
        "automountServiceAccountToken: true",
        "fieldPath: metadata.namespace",
        "fieldPath: metadata.name",
        "path: /healthz",
        "path: /readyz",
        "containerPort: 8080",
        "cpu: 50m",
        "memory: 64Mi",
        "memory: 256Mi",
        "- name: VAULTSYNC_METRICS_ADDR\n              value: \"0.0.0.0:8080\"",
        "- name: VAULTSYNC_LEADER_ELECT\n              value: \"true\"",
        "- name: VAULTSYNC_LOG_JSON\n              value: \"true\"",
        "- name: VAULTSYNC_DEFAULT_RPS\n              value: \"50\"",
        "- name: VAULTSYNC_DEFAULT_BURST\n              value: \"100\"",
        "- name: VAULTSYNC_ALLOWED_TOKEN_AUDIENCES\n              value: \"api://AzureADTokenExchange,vault\"",
        "- name: VAULTSYNC_OPERATOR_IDENTITY_IN_VAULT_STORES\n              value: \"false\"",
        "- name: VAULTSYNC_RECONCILE_TIMEOUT\n              value: \"2m\"",
        "- name: VAULTSYNC_CERTIFICATE_EXPIRY_WARNING\n              value: \"720h\"",
    ] {
        assert!(deployment.contains(fact), "the Deployment lacks {fact:?}:\n{deployment}");
    }
    let role = one_of_kind(&yaml, "Role");
    assert!(role.contains("coordination.k8s.io") && role.contains("leases"), "the Role lacks leases:\n{role}");
    assert!(role.contains(&format!("namespace: {}", ns.name)), "the Role is not in the release namespace:\n{role}");
    let cluster_role = one_of_kind(&yaml, "ClusterRole");
    assert!(!cluster_role.contains('*'), "the ClusterRole has a wildcard:\n{cluster_role}");
    assert!(cluster_role.contains("serviceaccounts/token"), "the ClusterRole lacks TokenRequest:\n{cluster_role}");
    assert!(cluster_role.contains("deployments"), "rollouts are on by default:\n{cluster_role}");
    let service = one_of_kind(&yaml, "Service");
    assert!(service.contains("name: http-metrics") && service.contains("port: 8080"), "{service}");
    assert!(of_kind(&yaml, "ServiceMonitor").is_empty(), "no ServiceMonitor by default");

    // The image tag defaults to the chart's appVersion.
    let default_tag = tools.render(&ns.name, &[]).await;
    assert!(default_tag.contains("image: \"ghcr.io/vaultsync/vaultsync-operator:0.1.0\""), "{default_tag}");

    // Other values: one replica (no PDB), rollouts off, an existing service account, scheduling settings.
    let varied = tools
        .render(
            &ns.name,
            &[
                "--set",
                "replicaCount=1",
                "--set",
                "rollouts.enabled=false",
                "--set",
                "serviceAccount.create=false",
                "--set",
                "serviceAccount.name=existing",
                "--set",
                "operator.logJson=false",
                "--set",
                "operator.reconcileTimeout=1m",
                "--set",
                "nodeSelector.kubernetes\\.io/os=linux",
                "--set",
                "podLabels.team=platform",
                "--set",
                "podAnnotations.example\\.com/note=hello",
                "--set-json",
                "tolerations=[{\"key\":\"dedicated\",\"operator\":\"Exists\",\"effect\":\"NoSchedule\"}]",
                "--set-json",
                "imagePullSecrets=[{\"name\":\"registry\"}]",
            ],
        )
        .await;
    assert!(of_kind(&varied, "PodDisruptionBudget").is_empty(), "no PDB with one replica:\n{varied}");
    assert!(of_kind(&varied, "ServiceAccount").is_empty(), "no ServiceAccount when create=false:\n{varied}");
    assert!(!one_of_kind(&varied, "ClusterRole").contains("\"apps\""), "rollouts off drops the apps rule");
    let varied_deployment = one_of_kind(&varied, "Deployment");
    for fact in [
        "replicas: 1",
        "serviceAccountName: existing",
        "- name: VAULTSYNC_LOG_JSON\n              value: \"false\"",
        "- name: VAULTSYNC_RECONCILE_TIMEOUT\n              value: \"1m\"",
        "kubernetes.io/os: linux",
        "team: platform",
        "example.com/note: hello",
        "key: dedicated",
        "- name: registry",
    ] {
        assert!(varied_deployment.contains(fact), "the Deployment lacks {fact:?}:\n{varied_deployment}");
    }
    let apply =
        tools.kubectl(&["apply", "--dry-run=server", "--namespace", &ns.name, "-f", "-"], Some(varied.clone())).await;
    assert_success(&apply, "kubectl apply --dry-run=server (varied values)");

    // The ServiceMonitor needs the Prometheus Operator's CRDs, which this cluster does not have: check the text.
    let monitored = tools.render(&ns.name, &["--set", "metrics.serviceMonitor.enabled=true"]).await;
    let monitor = one_of_kind(&monitored, "ServiceMonitor");
    assert!(monitor.contains("apiVersion: monitoring.coreos.com/v1"), "{monitor}");
    assert!(monitor.contains("- port: http-metrics") && monitor.contains("path: /metrics"), "{monitor}");
}

#[tokio::test]
async fn helm_install_creates_the_operator_and_its_rights() {
    let ns = TestNamespace::new("helm-install").await;
    install_crds(&ns.client).await;
    let tools = HelmTools::new();

    let out =
        tools.helm(&["install", "vs", CHART, "--namespace", &ns.name, "--skip-crds", "--set", "image.tag=test"]).await;
    assert_success(&out, "helm install");
    let notes = text(&out);
    assert!(notes.contains("STATUS: deployed"), "{notes}");
    assert!(notes.contains(&format!("installed as release \"vs\" in namespace \"{}\"", ns.name)), "{notes}");

    // The Deployment, as the apiserver stored it.
    let deployment = ns.api::<Deployment>().get("vs-vaultsync").await.expect("the Deployment");
    let spec = deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("vs-vaultsync"));
    assert_eq!(pod.automount_service_account_token, Some(true));
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("ghcr.io/vaultsync/vaultsync-operator:test"));
    let env = container.env.clone().expect("env");
    let value = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
    let field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.clone())
            .and_then(|v| v.field_ref)
            .map(|f| f.field_path)
    };
    assert_eq!(field("POD_NAMESPACE").as_deref(), Some("metadata.namespace"));
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(value("VAULTSYNC_METRICS_ADDR").as_deref(), Some("0.0.0.0:8080"));
    assert_eq!(value("VAULTSYNC_LEADER_ELECT").as_deref(), Some("true"));
    assert_eq!(value("VAULTSYNC_LOG_JSON").as_deref(), Some("true"));
    assert_eq!(value("VAULTSYNC_RECONCILE_TIMEOUT").as_deref(), Some("2m"));
    assert_eq!(value("VAULTSYNC_DEFAULT_RPS").as_deref(), Some("50"));
    assert_eq!(value("VAULTSYNC_DEFAULT_BURST").as_deref(), Some("100"));
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|g| g.path.clone())
    };
    assert_eq!(probe_path(&container.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe_path(&container.readiness_probe).as_deref(), Some("/readyz"));
    let security = container.security_context.clone().expect("container security context");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.run_as_user, Some(65532));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.capabilities.and_then(|c| c.drop), Some(vec!["ALL".to_string()]));
    assert_eq!(security.seccomp_profile.map(|s| s.type_).as_deref(), Some("RuntimeDefault"));

    // The controller manager acts on it: a ReplicaSet for two pods, owned by the Deployment.
    let replica_sets: Api<ReplicaSet> = ns.api();
    let rs = eventually(Duration::from_secs(30), "the operator's ReplicaSet", || async {
        let list = replica_sets.list(&ListParams::default().labels("app.kubernetes.io/instance=vs")).await.ok()?;
        list.items.into_iter().next()
    })
    .await;
    assert_eq!(rs.spec.replicas, Some(2));
    let owner = &rs.metadata.owner_references.as_ref().expect("owner references")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Deployment", "vs-vaultsync"));

    // The other namespaced objects.
    ns.api::<ServiceAccount>().get("vs-vaultsync").await.expect("the ServiceAccount");
    let service = ns.api::<Service>().get("vs-vaultsync-metrics").await.expect("the metrics Service");
    let port = &service.spec.expect("service spec").ports.expect("ports")[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("http-metrics"), 8080));
    let pdb = ns.api::<PodDisruptionBudget>().get("vs-vaultsync").await.expect("the PodDisruptionBudget");
    assert_eq!(
        pdb.spec.and_then(|s| s.min_available),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    // What the rules allow is checked by behaviour (the operator's tests run with exactly these rights) and with
    // `kubectl auth can-i` below; here only that they are no wildcards.
    let role = ns.api::<Role>().get("vs-vaultsync").await.expect("the Role");
    assert_no_wildcards(&role.rules.expect("role rules"), "the Role");

    // Cluster-scoped objects carry the namespace in their names, and hold exactly the needed rules.
    let cluster_name = format!("vs-vaultsync-{}", ns.name);
    let cluster_roles: Api<ClusterRole> = Api::all(ns.client.clone());
    let cluster_role = cluster_roles.get(&cluster_name).await.expect("the ClusterRole");
    assert_no_wildcards(&cluster_role.rules.expect("cluster role rules"), "the ClusterRole");
    let bindings: Api<ClusterRoleBinding> = Api::all(ns.client.clone());
    let binding = bindings.get(&cluster_name).await.expect("the ClusterRoleBinding");
    assert_eq!(binding.role_ref.name, cluster_name);
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!((subject.kind.as_str(), subject.name.as_str()), ("ServiceAccount", "vs-vaultsync"));
    assert_eq!(subject.namespace.as_deref(), Some(ns.name.as_str()));

    // Uninstalling removes the cluster-scoped objects too.
    let out = tools.helm(&["uninstall", "vs", "--namespace", &ns.name]).await;
    assert_success(&out, "helm uninstall");
    eventually(Duration::from_secs(30), "the ClusterRole to be deleted", || async {
        cluster_roles.get_opt(&cluster_name).await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(bindings.get_opt(&cluster_name).await.expect("reading bindings").is_none());
}

#[tokio::test]
async fn same_release_name_in_two_namespaces_does_not_clash() {
    let first = TestNamespace::new("helm-twice-a").await;
    let second = TestNamespace::new("helm-twice-b").await;
    install_crds(&first.client).await;
    let tools = HelmTools::new();
    for ns in [&first, &second] {
        let out = tools
            .helm(&["install", "twin", CHART, "--namespace", &ns.name, "--skip-crds", "--set", "image.tag=test"])
            .await;
        assert_success(&out, "helm install");
    }
    let cluster_roles: Api<ClusterRole> = Api::all(first.client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(first.client.clone());
    for ns in [&first, &second] {
        let name = format!("twin-vaultsync-{}", ns.name);
        let role = cluster_roles.get(&name).await.expect("each release's ClusterRole");
        let labels = role.metadata.labels.expect("labels");
        assert_eq!(labels.get("app.kubernetes.io/instance").map(String::as_str), Some("twin"));
        let binding = bindings.get(&name).await.expect("each release's ClusterRoleBinding");
        assert_eq!(binding.subjects.expect("subjects")[0].namespace.as_deref(), Some(ns.name.as_str()));
    }
    // Removing one release leaves the other's rights in place.
    let out = tools.helm(&["uninstall", "twin", "--namespace", &first.name]).await;
    assert_success(&out, "helm uninstall");
    let gone = format!("twin-vaultsync-{}", first.name);
    eventually(Duration::from_secs(30), "the first release's ClusterRole to be deleted", || async {
        cluster_roles.get_opt(&gone).await.ok()?.is_none().then_some(())
    })
    .await;
    cluster_roles.get(&format!("twin-vaultsync-{}", second.name)).await.expect("the second release's ClusterRole");
    let out = tools.helm(&["uninstall", "twin", "--namespace", &second.name]).await;
    assert_success(&out, "helm uninstall");
}

#[tokio::test]
async fn service_account_has_exactly_the_rights_it_needs() {
    let ns = TestNamespace::new("helm-rbac").await;
    let other = TestNamespace::new("helm-rbac-other").await;
    install_crds(&ns.client).await;
    let tools = HelmTools::new();
    let out = tools
        .helm(&["install", "rbac", CHART, "--namespace", &ns.name, "--skip-crds", "--set", "image.tag=test"])
        .await;
    assert_success(&out, "helm install");
    let sa = format!("system:serviceaccount:{}:rbac-vaultsync", ns.name);
    let here = ["--namespace", ns.name.as_str()];
    let there = ["--namespace", other.name.as_str()];

    let allowed: Vec<Vec<&str>> = vec![
        [&["create", "serviceaccounts", "--subresource=token"][..], &there].concat(),
        vec!["list", "secrets", "--all-namespaces"],
        vec!["watch", "secrets", "--all-namespaces"],
        [&["delete", "secrets"][..], &there].concat(),
        [&["create", "secrets"][..], &here].concat(),
        vec!["list", "vaultsecrets.vaultsync.dev", "--all-namespaces"],
        vec!["watch", "clustervaultstores.vaultsync.dev"],
        [&["patch", "vaultsecrets.vaultsync.dev", "--subresource=status"][..], &there].concat(),
        [&["patch", "vaultsecrets.vaultsync.dev"][..], &there].concat(),
        [&["get", "namespaces"][..], &there].concat(),
        // A VaultSecret's templateFrom names a ConfigMap of its namespace.
        [&["get", "configmaps"][..], &there].concat(),
        [&["patch", "secrets"][..], &there].concat(),
        [&["get", "vaultstores.vaultsync.dev"][..], &there].concat(),
        [&["create", "events.events.k8s.io"][..], &there].concat(),
        [&["patch", "deployments.apps"][..], &there].concat(),
        [&["update", "leases.coordination.k8s.io"][..], &here].concat(),
        [&["create", "leases.coordination.k8s.io"][..], &here].concat(),
    ];
    for args in &allowed {
        assert!(tools.can_i(&sa, args).await, "the operator should be allowed: {args:?}");
    }

    let denied: Vec<Vec<&str>> = vec![
        vec!["delete", "namespaces"],
        vec!["create", "clusterroles.rbac.authorization.k8s.io"],
        vec!["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        [&["update", "leases.coordination.k8s.io"][..], &there].concat(),
        [&["get", "leases.coordination.k8s.io"][..], &there].concat(),
        [&["update", "vaultsecrets.vaultsync.dev"][..], &there].concat(),
        [&["delete", "vaultstores.vaultsync.dev"][..], &there].concat(),
        [&["create", "serviceaccounts"][..], &there].concat(),
        vec!["list", "configmaps", "--all-namespaces"],
        [&["watch", "configmaps"][..], &there].concat(),
        [&["create", "pods"][..], &there].concat(),
        [&["create", "pods", "--subresource=exec"][..], &there].concat(),
        [&["delete", "deployments.apps"][..], &there].concat(),
        vec!["impersonate", "serviceaccounts"],
        // Rights no code path uses: the operator applies and patches, it never replaces (update) a Secret or a
        // VaultSecret, reads status subresources, sets blockOwnerDeletion (finalizers), lists or watches namespaces,
        // or needs a GET of a VaultSecret it watches.
        [&["update", "secrets"][..], &there].concat(),
        [&["update", "vaultsecrets.vaultsync.dev", "--subresource=status"][..], &there].concat(),
        [&["get", "vaultsecrets.vaultsync.dev", "--subresource=status"][..], &there].concat(),
        [&["update", "vaultsecrets.vaultsync.dev", "--subresource=finalizers"][..], &there].concat(),
        vec!["list", "namespaces"],
        vec!["watch", "namespaces"],
        [&["get", "vaultsecrets.vaultsync.dev"][..], &there].concat(),
        [&["create", "vaultsecrets.vaultsync.dev"][..], &there].concat(),
        [&["patch", "vaultstores.vaultsync.dev"][..], &there].concat(),
        [&["update", "deployments.apps"][..], &there].concat(),
        [&["delete", "leases.coordination.k8s.io"][..], &here].concat(),
    ];
    for args in &denied {
        assert!(!tools.can_i(&sa, args).await, "the operator should be denied: {args:?}");
    }

    // With rollouts off, the right to patch workloads goes away.
    let out = tools
        .helm(&[
            "upgrade",
            "rbac",
            CHART,
            "--namespace",
            &ns.name,
            "--skip-crds",
            "--set",
            "image.tag=test",
            "--set",
            "rollouts.enabled=false",
        ])
        .await;
    assert_success(&out, "helm upgrade");
    let patch_deployments = [&["patch", "deployments.apps"][..], &there].concat();
    eventually(Duration::from_secs(30), "the rollouts right to be withdrawn", || async {
        (!tools.can_i(&sa, &patch_deployments).await).then_some(())
    })
    .await;
    assert!(tools.can_i(&sa, &["list", "secrets", "--all-namespaces"]).await, "other rights stay");

    let out = tools.helm(&["uninstall", "rbac", "--namespace", &ns.name]).await;
    assert_success(&out, "helm uninstall");
}

#[tokio::test]
async fn wrong_values_fail_the_install_with_a_clear_message() {
    let ns = TestNamespace::new("helm-schema").await;
    install_crds(&ns.client).await;
    let tools = HelmTools::new();
    for (values, message) in [
        (&["--set", "replicaCount=two"][..], "at '/replicaCount': got string, want integer"),
        (&["--set", "replicaCont=2"][..], "additional properties 'replicaCont' not allowed"),
        (&["--set", "image.pullPolicy=Sometimes"][..], "at '/image/pullPolicy': value must be one of"),
        (&["--set", "operator.reconcileTimeout=30 seconds"][..], "at '/operator/reconcileTimeout'"),
        (&["--set", "metrics.port=80800"][..], "at '/metrics/port': maximum"),
        (&["--set", "eventGrid.enabled=true"][..], "at '/eventGrid/keySecret/name': minLength"),
        (&["--set", "hostNetwork=yes"][..], "at '/hostNetwork': got string, want boolean"),
        (&["--set", "sharding.shards=65"][..], "at '/sharding/shards': maximum"),
        (&["--set", "sharding.shards=0"][..], "at '/sharding/shards': minimum"),
    ] {
        let mut args = vec!["install", "bad", CHART, "--namespace", &ns.name, "--skip-crds"];
        args.extend_from_slice(values);
        let out = tools.helm(&args).await;
        assert!(!out.status.success(), "helm install {values:?} must fail");
        let said = text(&out);
        assert!(said.contains("values don't meet the specifications of the schema"), "{values:?}: {said}");
        assert!(said.contains(message), "{values:?} should say {message:?}:\n{said}");
    }
    let deployments = ns.api::<Deployment>().list(&ListParams::default()).await.expect("listing Deployments");
    assert!(deployments.items.is_empty(), "nothing was installed");

    // The values the node tests use: the host network, a chosen metrics port, extra environment.
    let yaml = tools
        .render(
            &ns.name,
            &[
                "--set",
                "hostNetwork=true",
                "--set",
                "metrics.port=18080",
                "--set-json",
                r#"operator.extraEnv=[{"name":"KUBERNETES_SERVICE_HOST","value":"127.0.0.1"}]"#,
            ],
        )
        .await;
    let deployment = one_of_kind(&yaml, "Deployment");
    for fact in [
        "hostNetwork: true",
        "dnsPolicy: ClusterFirstWithHostNet",
        "containerPort: 18080",
        "value: \"0.0.0.0:18080\"",
        "- name: KUBERNETES_SERVICE_HOST\n              value: 127.0.0.1",
    ] {
        assert!(deployment.contains(fact), "the Deployment lacks {fact:?}:\n{deployment}");
    }
    assert!(one_of_kind(&yaml, "Service").contains("port: 18080"), "the metrics Service follows metrics.port");
    let defaults = tools.render(&ns.name, &[]).await;
    assert!(!defaults.contains("hostNetwork"), "the pod network by default");
}

#[tokio::test]
async fn the_event_grid_endpoint_reaches_the_leader_only() {
    let ns = TestNamespace::new("helm-eventgrid").await;
    install_crds(&ns.client).await;
    let tools = HelmTools::new();
    let off = tools.render(&ns.name, &[]).await;
    assert!(of_kind(&off, "Service").iter().all(|s| !s.contains("name: vs-vaultsync-eventgrid")), "none by default");
    assert!(!one_of_kind(&off, "Role").contains("pods"), "no right on pods without the endpoint");
    assert!(!one_of_kind(&off, "Deployment").contains("VAULTSYNC_LABEL_LEADER_POD"));

    let on = tools
        .render(&ns.name, &["--set", "eventGrid.enabled=true", "--set", "eventGrid.keySecret.name=grid-key"])
        .await;
    let service =
        of_kind(&on, "Service").into_iter().find(|s| s.contains("name: vs-vaultsync-eventgrid")).expect("Service");
    assert!(service.contains("vaultsync.dev/leader: \"true\""), "only the leader's pod is selected:\n{service}");
    let role = one_of_kind(&on, "Role");
    assert!(role.contains("pods") && role.contains("patch"), "the replicas label their own pods:\n{role}");
    assert!(
        one_of_kind(&on, "Deployment").contains("- name: VAULTSYNC_LABEL_LEADER_POD\n              value: \"true\"")
    );
    let apply = tools.kubectl(&["apply", "--dry-run=server", "--namespace", &ns.name, "-f", "-"], Some(on)).await;
    assert_success(&apply, "kubectl apply --dry-run=server (Event Grid on)");
}

#[tokio::test]
async fn sharding_runs_a_replica_per_shard_and_a_standby() {
    let ns = TestNamespace::new("helm-shards").await;
    install_crds(&ns.client).await;
    let tools = HelmTools::new();
    let unsharded = tools.render(&ns.name, &[]).await;
    let deployment = one_of_kind(&unsharded, "Deployment");
    assert!(deployment.contains("replicas: 2\n"), "replicaCount by default:\n{deployment}");
    assert!(deployment.contains("- name: VAULTSYNC_SHARDS\n              value: \"1\""), "{deployment}");

    let sharded = tools
        .render(
            &ns.name,
            &["--set", "sharding.shards=3", "--set", "replicaCount=7", "--set", "metrics.prometheusRule.enabled=true"],
        )
        .await;
    let deployment = one_of_kind(&sharded, "Deployment");
    assert!(deployment.contains("replicas: 4\n"), "three shards and one standby, replicaCount unused:\n{deployment}");
    assert!(deployment.contains("- name: VAULTSYNC_SHARDS\n              value: \"3\""), "{deployment}");
    assert!(one_of_kind(&sharded, "PrometheusRule").contains("sum(vaultsync_leader) < 3"), "a leader per shard");
    let no_standby = tools.render(&ns.name, &["--set", "sharding.shards=2", "--set", "sharding.standbys=0"]).await;
    assert!(one_of_kind(&no_standby, "Deployment").contains("replicas: 2\n"));
    assert_eq!(of_kind(&no_standby, "PodDisruptionBudget").len(), 1, "two replicas keep their budget");
    assert!(!deployment.contains("POD_IP"), "no pod IP without the Event Grid endpoint");
    let grid = ["--set", "sharding.shards=3", "--set", "eventGrid.enabled=true", "--set", "eventGrid.keySecret.name=k"];
    let with_grid = tools.render(&ns.name, &grid).await;
    // The shards pass deliveries on to each other's pod IPs.
    let pod_ip = "- name: POD_IP\n              valueFrom:\n                fieldRef:\n                  fieldPath: status.podIP";
    assert!(one_of_kind(&with_grid, "Deployment").contains(pod_ip), "{with_grid}");
    let apply =
        tools.kubectl(&["apply", "--dry-run=server", "--namespace", &ns.name, "-f", "-"], Some(with_grid)).await;
    assert_success(&apply, "kubectl apply --dry-run=server (3 shards, Event Grid on)");
}

// === The CSI plugin (csi.enabled) ===

/// The CSI plugin's objects (labelled component `csi`) of the chart rendered with `extra` values.
async fn render_csi(tools: &HelmTools, namespace: &str, extra: &[&str]) -> String {
    let mut args = vec!["--set", "csi.enabled=true"];
    args.extend_from_slice(extra);
    let yaml = tools.render(namespace, &args).await;
    let csi: Vec<&str> =
        documents(&yaml).into_iter().filter(|d| d.contains("app.kubernetes.io/component: csi")).collect();
    csi.join("\n---\n")
}

#[tokio::test]
async fn csi_node_plugin_chart_is_accepted_and_least_privileged() {
    let ns = TestNamespace::new("helm-csi").await;
    let tools = HelmTools::new();
    for extra in [&["--set", "csi.enabled=true"][..], &["--set", "csi.enabled=true", "--set", "csi.mode=provider"][..]]
    {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend_from_slice(extra);
        let out = tools.helm(&args).await;
        assert_success(&out, "helm lint");
        assert!(!text(&out).contains("[WARNING]") && !text(&out).contains("[ERROR]"), "{}", text(&out));
    }
    let bogus = tools.helm(&["template", "vs", CHART, "--set", "csi.enabled=true", "--set", "csi.mode=both"]).await;
    assert!(!bogus.status.success() && text(&bogus).contains("/csi/mode"), "{}", text(&bogus));

    let yaml = render_csi(&tools, &ns.name, &["--set", "csi.caBundle=-----BEGIN CERTIFICATE-----"]).await;
    let apply =
        tools.kubectl(&["apply", "--dry-run=server", "--namespace", &ns.name, "-f", "-"], Some(yaml.clone())).await;
    assert_success(&apply, "kubectl apply --dry-run=server of the CSI objects");
    let driver = one_of_kind(&yaml, "CSIDriver");
    for fact in [
        "name: secrets.vaultsync.dev",
        "attachRequired: false",
        "podInfoOnMount: true",
        "- Ephemeral",
        "requiresRepublish: true",
        "audience: \"api://AzureADTokenExchange\"",
        "audience: \"vault\"",
    ] {
        assert!(driver.contains(fact), "the CSIDriver lacks {fact:?}:\n{driver}");
    }
    let daemonset = one_of_kind(&yaml, "DaemonSet");
    for fact in [
        "image: \"ghcr.io/vaultsync/vaultsync-csi:0.1.0\"",
        "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.13.0",
        "--kubelet-registration-path=/var/lib/kubelet/plugins/secrets.vaultsync.dev/csi.sock",
        "mountPropagation: Bidirectional",
        "path: /var/lib/kubelet/pods",
        "path: /var/lib/kubelet/plugins_registry",
        "value: unix:///csi/csi.sock",
        "fieldPath: spec.nodeName",
        "- name: VAULTSYNC_CA_BUNDLE_FILE",
        "readOnlyRootFilesystem: true",
    ] {
        assert!(daemonset.contains(fact), "the DaemonSet lacks {fact:?}:\n{daemonset}");
    }
    // Privileged only where mounting needs it: the plugin container, not the registrar.
    assert_eq!(daemonset.matches("privileged: true").count(), 1, "{daemonset}");
    let registrar = daemonset.split("- name: node-driver-registrar").nth(1).expect("the registrar container");
    assert!(registrar.contains("privileged: false") && registrar.contains("- ALL"), "{registrar}");
    // The plugin reads no Secret and requests no token: the pod's come from kubelet.
    let cluster_role = one_of_kind(&yaml, "ClusterRole");
    assert!(!cluster_role.contains('*'), "the CSI ClusterRole has a wildcard:\n{cluster_role}");
    for forbidden in ["\"secrets\"", "serviceaccounts/token"] {
        assert!(!cluster_role.contains(forbidden), "the CSI ClusterRole grants {forbidden}:\n{cluster_role}");
    }
    for verbs in cluster_role.lines().filter(|l| l.trim_start().starts_with("verbs:")) {
        let read_only = verbs
            .split(['[', ']', ',', '"', ' '])
            .filter(|w| !w.is_empty() && *w != "verbs:")
            .all(|w| matches!(w, "get" | "list" | "watch"));
        assert!(read_only, "the CSI ClusterRole may only read: {verbs}");
    }

    // Provider-only mode: no CSIDriver, no privilege, the socket folder of the Secrets Store CSI Driver.
    let provider = render_csi(&tools, &ns.name, &["--set", "csi.mode=provider"]).await;
    let apply =
        tools.kubectl(&["apply", "--dry-run=server", "--namespace", &ns.name, "-f", "-"], Some(provider.clone())).await;
    assert_success(&apply, "kubectl apply --dry-run=server of provider mode");
    assert!(of_kind(&provider, "CSIDriver").is_empty(), "provider mode has no CSIDriver:\n{provider}");
    let daemonset = one_of_kind(&provider, "DaemonSet");
    for fact in ["path: /var/run/secrets-store-csi-providers", "value: /provider", "privileged: false", "- ALL"] {
        assert!(daemonset.contains(fact), "the provider DaemonSet lacks {fact:?}:\n{daemonset}");
    }
    for absent in ["privileged: true", "Bidirectional", "node-driver-registrar"] {
        assert!(!daemonset.contains(absent), "the provider DaemonSet has {absent:?}:\n{daemonset}");
    }
}
