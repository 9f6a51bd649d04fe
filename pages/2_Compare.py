"""Compare: one image under several budgets, or several methods at one budget, side by side."""

from dataclasses import replace

import streamlit as st

import ui
from ats_viz import ATSConfig, InputError, viz
from ats_viz.vit import METHODS, resolve

settings = ui.sidebar()
st.title("Compare thresholds")
loaded = ui.model_or_error(settings) if settings else None
chosen = ui.image_input("compare")
if loaded is None or chosen is None:
    st.stop()

mode = st.radio("Compare", ["Budgets K", "Methods at one K"], horizontal=True, key="compare_mode")
if mode == "Budgets K":
    ladder = st.text_input("K values", "all, 0.75, 0.5, 0.25", key="compare_ladder",
                           help="Comma-separated: 'all', counts (98) or fractions (0.5). Method and stages "
                                "come from the sidebar (ATS if the sidebar says full).")
    method = settings.config.method if settings.config.method != "full" else "ats"
    texts = [t.strip() for t in ladder.split(",") if t.strip()]
    configs = []
    try:
        configs = [replace(settings.config, method=method, k=ui.parse_k(t)) for t in texts]
    except InputError as err:
        st.error(str(err))
    x_title = "K"
else:
    c1, c2 = st.columns([3, 1])
    methods = c1.multiselect("Methods", list(METHODS), default=["ats", "topk", "random"],
                             format_func=ui.METHOD_NAMES.get, key="compare_methods")
    k_text = c2.text_input("K for all", "0.5", key="compare_k")
    texts = [ui.METHOD_NAMES[m] for m in methods]
    try:
        k = ui.parse_k(k_text)
        configs = [replace(settings.config, method=m, k=k) for m in methods]
    except InputError as err:
        st.error(str(err))
        configs = []
    x_title = "method"

depth, patches = len(loaded.net.blocks), loaded.net.patch_embed.num_patches
try:
    for cfg in configs:
        resolve(cfg, depth, patches)
except InputError as err:
    st.error(str(err))
    configs = []
if not configs:
    st.stop()

prepared = ui.prepare(loaded, *chosen)
if prepared is None:
    st.stop()
x, seen = prepared
with st.spinner(f"Running {len(configs)} settings..."):
    results = [ui.run(loaded, x, cfg) for cfg in configs]
full = ui.run(loaded, x, ATSConfig(method="full"))

total = full.grid[0] * full.grid[1]
cols = st.columns(len(results))
rows = []
for col, label, cfg, res in zip(cols, texts, configs, results):
    top = viz.topk(res.logits[0], loaded.class_names, 1)[0]
    final = int(res.patch_counts[0, -1])
    with col:
        st.markdown(f"**{cfg.label() if mode == 'Budgets K' else label}**")
        img = viz.overlay(seen, res.stages[-1].kept_mask[0].numpy(), res.grid) if res.stages else seen
        st.image(img, width="stretch")
        st.metric("Tokens kept", f"{final} / {total}")
        st.metric("GFLOPs", f"{float(res.gflops[0]):.3f}", f"{float(res.gflops[0]) / res.full_gflops - 1:+.0%}",
                  delta_color="inverse")
        st.metric("Top-1", top[0], f"{top[1]:.1%}", delta_color="off")
    rows.append((label, float(res.gflops[0]), top[1]))

labels = [r[0] for r in rows]
st.plotly_chart(viz.compare_figure(labels, [r[1] for r in rows], [r[2] for r in rows], full.full_gflops, x_title),
                width="stretch")
st.plotly_chart(viz.tokens_figure(dict(zip(labels, results)), "Patch tokens per block, every setting"),
                width="stretch")
