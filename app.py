"""ats-viz: `streamlit run app.py`. This is the home page; Streamlit finds the other pages in
pages/ (a pages/ folder and st.navigation do not mix: deep links and st.switch_page break), and
ui.sidebar() lists them by name."""

import streamlit as st

import ui

settings = ui.sidebar()

st.title("Adaptive Token Sampling, seen and measured")
st.markdown(
    "**ATS** (Fayyaz et al., ECCV 2022) scores the tokens of a vision transformer by the class "
    "token's attention times each value's norm, and keeps only the significant ones by inverse "
    "transform sampling, so every image gets its own token count and its own cost. "
    "Here you can watch it choose, stage by stage, and measure what it saves on your own images, "
    "videos and datasets."
)
cols = st.columns(4)
blurbs = {
    "pages/1_Image.py": "Upload an image: the tokens kept at every stage, their scores, the GFLOPs.",
    "pages/2_Compare.py": "One image under several budgets or methods, side by side.",
    "pages/3_Video.py": "How the token budget follows the frames of a video.",
    "pages/4_Dataset.py": "GFLOPs-versus-accuracy curves over a whole dataset.",
}
for col, (path, text) in zip(cols, blurbs.items()):
    with col.container(border=True):
        st.page_link(path, label=f"**{ui.PAGES[path][0]}**")
        st.caption(text)

if settings is not None:
    loaded = ui.model_or_error(settings)
    if loaded is not None and loaded.card:
        h = loaded.card["heldout"]
        st.subheader("The model in use")
        st.markdown(
            f"**{loaded.card['name']}**: {loaded.card['arch_summary']}, trained on this project's "
            f"synthetic scenes: 1 to 8 shapes, labelled by the kind that occurs most often "
            f"({', '.join(loaded.class_names)}). On {h['images']:,} held-out images (seed {h['seed']}): "
            f"top-1 {h['top1_full']:.1%} in full at {h['gflops_full']:.3f} GFLOPs; with ATS "
            f"{h['top1_ats']:.1%} at {h['gflops_ats']:.3f} GFLOPs ({h['gflops_saved']:.0%} saved)."
        )
        st.caption("Pick a timm model or a checkpoint file in the sidebar to use your own.")
