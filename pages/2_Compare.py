"""Compare: one image under a ladder of one method's settings, or every method at equal cost."""

from dataclasses import replace

import streamlit as st

import ui
from ats_viz import ATSConfig, InputError, overlays, viz
from ats_viz.cost import equal_cost
from ats_viz.methods import METHODS, REDUCERS, get, parse_ladder
from ats_viz.setting import FULL

settings = ui.sidebar()
st.title("Compare settings and methods")
loaded = ui.model_or_error(settings) if settings else None
chosen = ui.image_input("compare")
if loaded is None or chosen is None:
    st.stop()
prepared = ui.prepare(loaded, *chosen)
if prepared is None:
    st.stop()
x, seen = prepared

mode = st.radio("Compare", ["Budgets", "Methods at equal cost"], horizontal=True, key="compare_mode")
if mode == "Budgets":
    # The sidebar's method, or ATS where the sidebar asks for the full model (it has no ladder).
    method = get(settings.config.method) if get(settings.config.method).param else get(ATSConfig().method)
    ladder = st.text_input(f"{method.param.symbol} values ({method.label})", method.param.ladder,
                           key=f"compare_ladder_{method.name}",
                           help=f"Comma-separated. {method.param.help} Method and stages come from the sidebar.")
    try:
        configs = [replace(settings.config, method=method.name, **{method.param.field: v})
                   for v in parse_ladder(method.name, ladder)]
    except InputError as err:
        st.error(str(err))
        st.stop()
    titles = [cfg.label() for cfg in configs]
    x_title = method.param.symbol
else:
    names = st.multiselect("Methods", list(REDUCERS), default=list(REDUCERS), key="compare_methods",
                           format_func=lambda n: METHODS[n].label)
    # The reference is the adaptive method as the sidebar sets it (ATS, K = all, where the
    # sidebar names a method of fixed rate: those are what gets matched to it).
    ats = settings.config if get(settings.config.method).adaptive else ATSConfig()
    st.caption(f"Every method is set to land nearest the GFLOPs that **{ats.label()}** spends on this image; "
               "ATS adapts per image, the others have fixed rates. Stages: each method's own.")
    if not ui.check(loaded, [ats]):
        st.stop()
    target = float(ui.run(loaded, x, ats, settings.device).gflops[0])
    configs = [ats if n == ats.method else equal_cost(loaded.net, n, target)[0] for n in names
               if n == ats.method or not get(n).adaptive]
    titles = [cfg.label() for cfg in configs]
    x_title = "method"

if not configs or not ui.check(loaded, configs):
    st.stop()
with st.spinner(f"Running {len(configs)} settings..."):
    results = [ui.run(loaded, x, cfg, settings.device) for cfg in configs]
full = ui.run(loaded, x, FULL, settings.device)

speed = ui.measured_speed(loaded, x, configs, "compare", settings.device)
if speed is not None:
    st.metric("full: measured", f"{speed[FULL.id].ms_per_image:.1f} ms")
total = full.grid[0] * full.grid[1]
rows = []
per_row = 6  # every method of the registry side by side
for start in range(0, len(results), per_row):
    cols = st.columns(min(per_row, len(results)))
    row = slice(start, start + per_row)
    for col, title, cfg, res in zip(cols, titles[row], configs[row], results[row]):
        top = viz.topk(res.logits[0], loaded.class_names, 1)[0]
        final = int(res.patch_counts[0, -1])
        gf = float(res.gflops[0])
        with col:
            st.markdown(f"**{title}**")
            st.image(overlays.stage_view(seen, res, res.stages[-1]) if res.stages else seen, width="stretch")
            st.metric("Tokens at the end", f"{final} / {total}")
            st.metric("GFLOPs", f"{gf:.3f}", f"{gf / res.full_gflops - 1:+.0%}", delta_color="inverse")
            st.metric("Top-1", top[0], f"{top[1]:.1%}", delta_color="off")
            if speed is not None:
                m, ref = speed[cfg.id], speed[FULL.id]
                st.metric("Measured", f"{m.ms_per_image:.1f} ms",
                          f"{ref.ms_per_image / m.ms_per_image:.2f}x speed-up", delta_color="off",
                          help=f"GFLOPs ratio {ref.gflops / m.gflops:.2f}x; interquartile range "
                               f"{m.ms(0.25):.1f} to {m.ms(0.75):.1f} ms")
        rows.append((title, gf, top[1]))

st.caption(ui.GFLOPS_NOTE)
labels = [r[0] for r in rows]
st.plotly_chart(viz.compare_figure(labels, [r[1] for r in rows], [r[2] for r in rows], full.full_gflops, x_title),
                width="stretch")
st.plotly_chart(viz.tokens_figure(dict(zip(labels, results)), "Patch tokens per block, every setting"),
                width="stretch")
